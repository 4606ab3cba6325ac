//! InferenceService status, derived from what was observed (never stored twice): conditions
//! with reasons that name the real failure, revisions with their replicas and traffic.

use std::collections::BTreeMap;

use ferry_api::{Condition, InferenceServiceStatus, RevisionStatus};

use crate::rollout::{self, Target};
use crate::routes::ServiceRoute;
use crate::{ReplicaHealth, ReplicaView};

/// Condition reasons that say a revision cannot become ready without a change (a failure, as
/// opposed to progress): `ferry apply --wait` stops on them, events carry them as warnings.
pub const FAILURE_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ModelNotReady",
    "ProgressDeadlineExceeded",
    "Unschedulable",
    "FailedCreate",
    "NoReadyReplicas",
    // IngressReady: the spec asks for an HTTPRoute where the cluster serves no Gateway API.
    "GatewayAPIMissing",
    crate::runtime::RUNTIME_NOT_FOUND,
    crate::runtime::UNSUPPORTED_MODEL_FORMAT,
    crate::runtime::NO_RUNTIME_FOR_FORMAT,
];

/// Whether a condition reason is one of [`FAILURE_REASONS`] or of the kubelet's container
/// failures ([`crate::observe::CONTAINER_FAILURES`]).
pub fn is_failure(reason: &str) -> bool {
    FAILURE_REASONS.contains(&reason) || crate::observe::CONTAINER_FAILURES.contains(&reason)
}

/// The conditions of `next` whose status or reason differ from `previous` (or that are new):
/// what a status change says beyond progress.
fn changed<'a>(
    previous: Option<&InferenceServiceStatus>,
    next: &'a InferenceServiceStatus,
) -> impl Iterator<Item = &'a Condition> {
    let before: Vec<(&str, &str, &str)> = previous
        .map(|p| {
            p.conditions
                .iter()
                .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
                .collect()
        })
        .unwrap_or_default();
    next.conditions.iter().filter(move |c| {
        !before.contains(&(c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
    })
}

/// Whether going from `previous` to `next` is progress alone (replica counts, messages): no
/// condition changed its status or reason. Progress may be written lazily; transitions not.
pub fn progress_only(
    previous: Option<&InferenceServiceStatus>,
    next: &InferenceServiceStatus,
) -> bool {
    previous.is_some() && changed(previous, next).next().is_none()
}

/// The event a status change is worth, both modes alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// A condition names a failure ([`is_failure`]).
    pub warning: bool,
    /// The reason of the first condition in the event.
    pub reason: String,
    /// `Type=Status: message` of every condition in the event, `; `-separated.
    pub note: String,
}

/// One event for the conditions that turned True or to a failure between `previous` and
/// `next`; `None` when none did (progress, such as `RolloutInProgress`, is no event).
pub fn transition_event(
    previous: Option<&InferenceServiceStatus>,
    next: &InferenceServiceStatus,
) -> Option<StatusEvent> {
    let worth: Vec<&Condition> = changed(previous, next)
        .filter(|c| c.status == "True" || is_failure(&c.reason))
        .collect();
    let first = worth.first()?;
    Some(StatusEvent {
        warning: worth.iter().any(|c| is_failure(&c.reason)),
        reason: first.reason.clone(),
        note: worth
            .iter()
            .map(|c| format!("{}={}: {}", c.type_, c.status, c.message))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Condition types Ferry sets.
pub const READY: &str = "Ready";
pub const LATEST_REVISION_READY: &str = "LatestRevisionReady";
/// Set only when the spec asks for an Ingress or an HTTPRoute.
pub const INGRESS_READY: &str = "IngressReady";

/// Everything the status is derived from.
pub struct Observed<'a> {
    pub generation: i64,
    pub target: &'a Target,
    pub replicas: &'a [ReplicaView],
    pub route: Option<&'a ServiceRoute>,
    pub startup_timeout_seconds: u64,
    pub url: String,
    /// Revision names, newest first, for ordering `status.revisions`.
    pub revision_order: &'a [String],
    /// Why replicas of the latest revision could not even be created (a cluster's ReplicaSet
    /// `FailedCreate`, e.g. a ResourceQuota), when that happened.
    pub creation_failure: Option<String>,
    /// The external entry point, when the spec asks for one: `(ok, reason, message)`, e.g.
    /// `(false, "GatewayAPIMissing", ...)` where the cluster does not serve HTTPRoutes.
    pub ingress: Option<(bool, String, String)>,
    /// Why no server can run the latest revision's model (cluster mode's ServingRuntimes): its
    /// replicas are not even rendered.
    pub runtime_problem: Option<crate::runtime::RuntimeProblem>,
}

/// Why the latest revision is not ready (or that it is): `(status, reason, message)`.
pub fn latest_revision_condition(observed: &Observed<'_>) -> (bool, &'static str, String) {
    let target = observed.target;
    let latest: Vec<&ReplicaView> = observed
        .replicas
        .iter()
        .filter(|r| r.revision == target.revision && !r.terminating)
        .collect();
    let ready = latest.iter().filter(|r| r.ready()).count() as u32;
    if let Some(problem) = &observed.runtime_problem {
        return (false, problem.reason, problem.message.clone());
    }
    if ready >= target.replicas {
        return (
            true,
            "RevisionReady",
            format!(
                "{ready}/{} replicas of {} ready",
                target.replicas, target.revision
            ),
        );
    }
    for replica in &latest {
        if let ReplicaHealth::CrashLoop {
            restarts,
            last_exit,
        } = &replica.health
        {
            return (
                false,
                "CrashLoopBackOff",
                format!(
                    "replica {} restarted {restarts} times; last exit: {last_exit}",
                    replica.id
                ),
            );
        }
    }
    for replica in &latest {
        if let ReplicaHealth::ContainerFailed { reason, message } = &replica.health {
            let reason = crate::observe::CONTAINER_FAILURES
                .iter()
                .find(|r| **r == reason.as_str())
                .copied()
                .unwrap_or("CreateContainerError");
            return (false, reason, format!("replica {}: {message}", replica.id));
        }
    }
    if let Some(message) = &observed.creation_failure {
        return (false, "FailedCreate", message.clone());
    }
    for replica in &latest {
        if let ReplicaHealth::Unschedulable { message } = &replica.health {
            return (
                false,
                "Unschedulable",
                format!("replica {}: {message}", replica.id),
            );
        }
    }
    for replica in &latest {
        if let ReplicaHealth::ModelNotReady { reason, .. } = &replica.health {
            return (
                false,
                "ModelNotReady",
                format!("replica {}: {reason}", replica.id),
            );
        }
    }
    for replica in &latest {
        if let ReplicaHealth::Starting { for_seconds } = replica.health
            && for_seconds > observed.startup_timeout_seconds
        {
            return (
                false,
                "ProgressDeadlineExceeded",
                format!(
                    "replica {} not ready after {for_seconds}s (startupTimeoutSeconds {})",
                    replica.id, observed.startup_timeout_seconds
                ),
            );
        }
    }
    (
        false,
        "RolloutInProgress",
        format!(
            "{ready}/{} replicas of {} ready",
            target.replicas, target.revision
        ),
    )
}

/// Derive the status; `previous` keeps transition times of conditions whose status did not change.
pub fn derive(
    observed: &Observed<'_>,
    previous: Option<&InferenceServiceStatus>,
    now: &str,
) -> InferenceServiceStatus {
    let (latest_ok, latest_reason, latest_message) = latest_revision_condition(observed);
    let traffic = observed
        .route
        .map(ServiceRoute::traffic_percent)
        .unwrap_or_default();
    let serving: Vec<String> = traffic
        .iter()
        .filter(|(_, pct)| **pct > 0)
        .map(|(rev, pct)| format!("{rev} ({pct}%)"))
        .collect();
    let ready_condition = if serving.is_empty() {
        let (reason, message) = if latest_ok {
            ("NoReadyReplicas", "no replica is ready".to_string())
        } else {
            (latest_reason, latest_message.clone())
        };
        (false, reason, message)
    } else if latest_ok && rollout::complete(observed.target, observed.replicas) {
        (true, "Serving", format!("serving {}", serving.join(", ")))
    } else if latest_ok {
        (
            true,
            "Serving",
            format!("serving {}; old replicas draining", serving.join(", ")),
        )
    } else {
        (
            true,
            "Serving",
            format!(
                "serving {}; latest revision {} not ready: {latest_reason}",
                serving.join(", "),
                observed.target.revision
            ),
        )
    };

    let mut per_revision: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for replica in observed.replicas.iter().filter(|r| !r.terminating) {
        let entry = per_revision.entry(replica.revision.as_str()).or_default();
        entry.0 += 1;
        entry.1 += u32::from(replica.ready());
    }
    per_revision
        .entry(observed.target.revision.as_str())
        .or_default();
    let position = |name: &str| {
        observed
            .revision_order
            .iter()
            .position(|n| n == name)
            .unwrap_or(usize::MAX)
    };
    let mut revisions: Vec<RevisionStatus> = per_revision
        .into_iter()
        .map(|(name, (replicas, ready))| RevisionStatus {
            name: name.to_string(),
            replicas,
            ready_replicas: ready,
            traffic_percent: traffic.get(name).copied().unwrap_or(0),
        })
        .collect();
    revisions.sort_by_key(|r| position(&r.name));

    let mut conditions = vec![
        condition(
            READY,
            ready_condition.0,
            ready_condition.1,
            ready_condition.2,
            previous,
            now,
        ),
        condition(
            LATEST_REVISION_READY,
            latest_ok,
            latest_reason,
            latest_message,
            previous,
            now,
        ),
    ];
    if let Some((ok, reason, message)) = &observed.ingress {
        conditions.push(condition(
            INGRESS_READY,
            *ok,
            reason,
            message.clone(),
            previous,
            now,
        ));
    }
    InferenceServiceStatus {
        observed_generation: Some(observed.generation),
        url: Some(observed.url.clone()),
        latest_revision: Some(observed.target.revision.clone()),
        revisions,
        conditions,
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    previous: Option<&InferenceServiceStatus>,
    now: &str,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| Some(now.to_string()));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
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
        assert!(!event.warning);
        assert_eq!(event.reason, "Serving");
        assert_eq!(
            event.note,
            "Ready=True: Serving said; LatestRevisionReady=True: RevisionReady said"
        );

        let crashing = with(&[
            (READY, "True", "Serving"),
            (LATEST_REVISION_READY, "False", "CrashLoopBackOff"),
        ]);
        let event = transition_event(Some(&ready), &crashing).unwrap();
        assert!(event.warning);
        assert_eq!(event.reason, "CrashLoopBackOff");
    }
    use crate::routes::{Endpoint, ServiceEndpoints, build};

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
        let service = ServiceEndpoints {
            namespace: "default".into(),
            service: "iris".into(),
            model: "iris".into(),
            endpoints: replicas
                .iter()
                .enumerate()
                .map(|(i, r)| Endpoint {
                    replica: r.clone(),
                    addrs: crate::routes::Addresses::tcp(
                        ([127, 0, 0, 1], 9000 + i as u16).into(),
                        ([127, 0, 0, 1], 9100 + i as u16).into(),
                    ),
                })
                .collect(),
            hosts: vec![],
        };
        let table = build(&[service]);
        let order = vec!["iris-2".to_string(), "iris-1".to_string()];
        let observed = Observed {
            generation: 3,
            target: &target,
            replicas,
            route: table.lookup("default", "iris"),
            startup_timeout_seconds: 60,
            url: "http://127.0.0.1:8080/v2/models/iris".into(),
            revision_order: &order,
            creation_failure: None,
            ingress: None,
            runtime_problem,
        };
        derive(&observed, None, "2026-11-28T00:00:00Z")
    }

    #[test]
    fn a_missing_runtime_is_named_while_the_old_revision_serves() {
        let problem = crate::runtime::RuntimeProblem {
            reason: crate::runtime::RUNTIME_NOT_FOUND,
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
}
