//! Status derivation: conditions, reasons and revisions from replica views.
use super::*;

fn with(conditions: &[(&str, &str, &str)]) -> InferenceServiceStatus {
    InferenceServiceStatus {
        conditions: conditions
            .iter()
            .map(|(type_, status, reason)| Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message: format!("{reason} said"),
                last_transition_time: None,
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn transitions_make_one_event_and_progress_none() {
    let rolling = with(&[
        (READY, "False", "RolloutInProgress"),
        (LATEST_REVISION_READY, "False", "RolloutInProgress"),
    ]);
    let mut more = rolling.clone();
    more.conditions[0].message = "1/2 replicas ready".into();
    assert!(progress_only(Some(&rolling), &more));
    assert_eq!(transition_event(Some(&rolling), &more), None);
    // A first status is never progress alone; progress conditions make no event.
    assert!(!progress_only(None, &rolling));
    assert_eq!(transition_event(None, &rolling), None);

    let ready = with(&[
        (READY, "True", "Serving"),
        (LATEST_REVISION_READY, "True", "RevisionReady"),
    ]);
    assert!(!progress_only(Some(&rolling), &ready));
    let event = transition_event(Some(&rolling), &ready).unwrap();
    assert_eq!(event.type_, crate::reason::EventType::Normal);
    assert_eq!(event.reason, Reason::Serving);
    assert_eq!(
        event.note,
        "Ready=True: Serving said; LatestRevisionReady=True: RevisionReady said"
    );

    let crashing = with(&[
        (READY, "True", "Serving"),
        (LATEST_REVISION_READY, "False", "CrashLoopBackOff"),
    ]);
    let event = transition_event(Some(&ready), &crashing).unwrap();
    assert_eq!(event.type_, crate::reason::EventType::Warning);
    assert_eq!(event.reason, Reason::CrashLoopBackOff);
}

fn view(id: &str, revision: &str, health: ReplicaHealth) -> ReplicaView {
    ReplicaView {
        id: id.into(),
        revision: revision.into(),
        health,
        terminating: false,
    }
}

fn status_of(replicas: &[ReplicaView]) -> InferenceServiceStatus {
    status_with(replicas, None)
}

fn status_with(
    replicas: &[ReplicaView],
    runtime_problem: Option<crate::runtime::RuntimeProblem>,
) -> InferenceServiceStatus {
    let target = Target {
        revision: "iris-2".into(),
        replicas: 2,
        max_surge: 1,
        max_unavailable: 0,
    };
    let traffic = crate::service::percent(&crate::service::ready_weights(replicas, &[]));
    let order = vec!["iris-2".to_string(), "iris-1".to_string()];
    let observed = StatusInputs {
        rollout: None,
        wakes_on_request: false,
        generation: 3,
        target: &target,
        replicas,
        traffic_percent: &traffic,
        startup_timeout_seconds: 60,
        url: "http://127.0.0.1:8080/v2/models/iris".into(),
        revision_order: &order,
        creation_failure: None,
        ingress: None,
        autoscaler: None,
        runtime_problem,
    };
    derive(&observed, None, "2026-11-28T00:00:00Z")
}

#[test]
fn a_missing_runtime_is_named_while_the_old_revision_serves() {
    let problem = crate::runtime::RuntimeProblem {
        reason: Reason::RuntimeNotFound,
        message: "ServingRuntime \"triton\" not found in namespace default".into(),
    };
    let old = [
        view("a", "iris-1", ReplicaHealth::Ready),
        view("b", "iris-1", ReplicaHealth::Ready),
    ];
    let s = status_with(&old, Some(problem.clone()));
    let latest = find(&s, LATEST_REVISION_READY);
    assert_eq!(
        (latest.status.as_str(), latest.reason.as_str()),
        ("False", "RuntimeNotFound")
    );
    assert!(latest.message.contains("triton"), "{}", latest.message);
    let ready = find(&s, READY);
    assert_eq!(ready.status, "True", "the old revision still serves");
    assert!(
        ready.message.contains("RuntimeNotFound"),
        "{}",
        ready.message
    );
    assert!(is_failure(&latest.reason), "apply --wait stops on it");
    // Nothing serving: Ready names the runtime problem too.
    let s = status_with(&[], Some(problem));
    assert_eq!(find(&s, READY).reason, "RuntimeNotFound");
}

fn find<'a>(status: &'a InferenceServiceStatus, type_: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn complete_rollout_is_ready() {
    let s = status_of(&[
        view("a", "iris-2", ReplicaHealth::Ready),
        view("b", "iris-2", ReplicaHealth::Ready),
    ]);
    assert_eq!(find(&s, READY).status, "True");
    assert_eq!(find(&s, LATEST_REVISION_READY).reason, "RevisionReady");
    assert_eq!(s.revisions[0].traffic_percent, 100);
}

#[test]
fn a_broken_new_revision_is_named_while_the_old_one_serves() {
    let s = status_of(&[
        view("a", "iris-1", ReplicaHealth::Ready),
        view("b", "iris-1", ReplicaHealth::Ready),
        view(
            "c",
            "iris-2",
            ReplicaHealth::ModelNotReady {
                reason: "warm-up failed: Gather index out of range".into(),
                for_seconds: 5,
            },
        ),
    ]);
    let latest = find(&s, LATEST_REVISION_READY);
    assert_eq!(
        (latest.status.as_str(), latest.reason.as_str()),
        ("False", "ModelNotReady")
    );
    assert!(
        latest.message.contains("warm-up failed"),
        "{}",
        latest.message
    );
    let ready = find(&s, READY);
    assert_eq!(ready.status, "True");
    assert!(ready.message.contains("iris-1 (100%)"), "{}", ready.message);
    assert_eq!(
        s.revisions
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec!["iris-2", "iris-1"]
    );
}

#[test]
fn a_model_that_cannot_be_fetched_is_named_in_both_modes_words() {
    let answer = "s3://models/iris.onnx: 403 SignatureDoesNotMatch";
    for health in [
        // Local mode: the server's readiness answer.
        ReplicaHealth::ModelNotReady {
            reason: format!("ModelFetchFailed: {answer}"),
            for_seconds: 1,
        },
        // A pod: the termination message of `ferry server --exit-on-load-failure`.
        ReplicaHealth::CrashLoop {
            restarts: 2,
            last_exit: format!(
                "exit code 3: ferry server: model iris failed to load: ModelFetchFailed: {answer}\n"
            ),
        },
    ] {
        let s = status_of(&[
            view("a", "iris-1", ReplicaHealth::Ready),
            view("c", "iris-2", health),
        ]);
        let latest = find(&s, LATEST_REVISION_READY);
        assert_eq!(latest.reason, "ModelFetchFailed");
        assert_eq!(latest.message, format!("replica c: {answer}"));
        assert_eq!(find(&s, READY).status, "True", "the stable revision serves");
    }
    assert_eq!(fetch_failure("warm-up failed"), None);
}

#[test]
fn crash_loop_and_deadline_are_reasons() {
    let s = status_of(&[view(
        "c",
        "iris-2",
        ReplicaHealth::CrashLoop {
            restarts: 3,
            last_exit: "exit code 2: no such file".into(),
        },
    )]);
    let ready = find(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "CrashLoopBackOff")
    );
    assert!(ready.message.contains("exit code 2: no such file"));
    let s = status_of(&[view(
        "c",
        "iris-2",
        ReplicaHealth::Starting { for_seconds: 61 },
    )]);
    assert_eq!(
        find(&s, LATEST_REVISION_READY).reason,
        "ProgressDeadlineExceeded"
    );
}

#[test]
fn a_new_generation_is_one_spec_changed_event_naming_its_cause() {
    let mut isvc = crate::testing::isvc(
        "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata:\n  name: iris\n  annotations: {ferry.dev/change-cause: \"alice: ferry apply -f iris.yaml\"}\nspec:\n  predictor:\n    model: {format: onnx, uri: /m/iris.onnx}\n",
    );
    isvc.metadata.generation = Some(3);
    let mut seen = InferenceServiceStatus {
        observed_generation: Some(2),
        ..Default::default()
    };
    let event = spec_changed_event(&isvc, Some(&seen)).unwrap();
    assert_eq!(event.reason, Reason::SpecChanged);
    assert_eq!(
        event.note,
        "generation 3: by alice: ferry apply -f iris.yaml"
    );
    seen.observed_generation = Some(3);
    assert_eq!(
        spec_changed_event(&isvc, Some(&seen)),
        None,
        "once per generation"
    );
    isvc.metadata.annotations = None;
    let first = spec_changed_event(&isvc, None).unwrap();
    assert!(
        first
            .note
            .starts_with("generation 3: no change cause recorded"),
        "{}",
        first.note
    );
}
