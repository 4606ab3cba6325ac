//! A [`ServicePlan`] as object writes: the one translation from the core's decision to what
//! the operator sends the API server for a service's revisions. Pure, so it is unit-tested
//! without a cluster; `apply.rs` carries the writes out.

use ferry_core::reason::PlannedEvent;
use ferry_core::service::ServicePlan;

/// One write of a revision's objects.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Write {
    /// Server-side apply of the latest revision's Deployment (rendered with `replicas`) and
    /// its Service.
    ApplyLatest {
        revision: String,
        replicas: u32,
        /// An experiment variant's predictor, rendered in place of the spec's (`None`: the
        /// latest revision itself).
        predictor: Option<Box<ferry_api::PredictorSpec>>,
        /// The decision's event, when its count changes (or it is created).
        event: Option<PlannedEvent>,
        /// The step's `QuotaHeld` event, when a quota holds back part of it.
        quota: Option<PlannedEvent>,
    },
    /// An older revision keeps its template: only its replica count changes (a merge patch:
    /// an apply of just `replicas` would drop the template this manager owns).
    Scale {
        revision: String,
        replicas: u32,
        event: PlannedEvent,
    },
    /// A retired revision: its Deployment and Service are deleted.
    Retire {
        revision: String,
        event: PlannedEvent,
    },
}

/// The writes `plan` asks for, retirements first; nothing when the latest revision cannot be
/// rendered (no server runs it: what serves keeps serving, untouched).
pub(crate) fn writes(plan: &ServicePlan) -> Vec<Write> {
    if !plan.render_latest {
        return Vec::new();
    }
    let latest = plan.target.revision.as_str();
    let event_of = |revision: &str| {
        plan.changes
            .iter()
            .find(|c| c.revision == revision)
            .map(|c| c.event.clone())
    };
    let mut out: Vec<Write> = plan
        .changes
        .iter()
        .filter(|c| c.retire)
        .map(|c| Write::Retire {
            revision: c.revision.clone(),
            event: c.event.clone(),
        })
        .collect();
    for (revision, replicas) in &plan.scale {
        if revision == latest {
            out.push(Write::ApplyLatest {
                revision: revision.clone(),
                replicas: *replicas,
                predictor: None,
                event: event_of(revision),
                quota: plan.quota_event.clone(),
            });
        } else if let Some(predictor) = plan.companions.get(revision) {
            out.push(Write::ApplyLatest {
                revision: revision.clone(),
                replicas: *replicas,
                predictor: Some(Box::new(predictor.clone())),
                event: event_of(revision),
                quota: None,
            });
        } else if let Some(event) = event_of(revision) {
            out.push(Write::Scale {
                revision: revision.clone(),
                replicas: *replicas,
                event,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_core::reason::Reason;
    use ferry_core::service::{EntryPoint, Observation, Signals};
    use ferry_core::{ReplicaHealth, ReplicaView};

    use super::*;

    fn isvc() -> ferry_api::InferenceService {
        ferry_api::testing::isvc(
            "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: iris, namespace: default}\nspec:\n  predictor:\n    minReplicas: 2\n    model: {format: onnx, uri: /m/iris.onnx}\n",
        )
    }

    fn pod(id: &str, revision: &str, ready: bool) -> ReplicaView {
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

    fn writes_for(
        pods: &[ReplicaView],
        scale: &[(&str, u32)],
        problem: bool,
    ) -> Vec<(String, String, u32, Option<Reason>)> {
        let scale: BTreeMap<String, u32> = scale.iter().map(|(r, n)| (r.to_string(), *n)).collect();
        let observation = Observation {
            generation: 1,
            previous_status: None,
            latest: "iris-2",
            replicas: pods,
            scale: &scale,
            creation_failure: None,
            ingress: None,
            autoscaler: None,
            runtime_problem: problem.then(|| ferry_core::runtime::RuntimeProblem {
                reason: Reason::RuntimeNotFound,
                message: "no such runtime".into(),
            }),
            entry: EntryPoint::Cluster,
            quota_room: None,
            stalled_since: None,
        };
        let now = "2026-12-01T10:00:00Z".parse().unwrap();
        let plan = ferry_core::service::plan(&isvc(), &[], &observation, &Signals::default(), now);
        writes(&plan)
            .into_iter()
            .map(|w| match w {
                Write::ApplyLatest {
                    revision,
                    replicas,
                    event,
                    ..
                } => ("apply".into(), revision, replicas, event.map(|e| e.reason)),
                Write::Scale {
                    revision,
                    replicas,
                    event,
                } => ("scale".into(), revision, replicas, Some(event.reason)),
                Write::Retire { revision, event } => {
                    ("retire".into(), revision, 0, Some(event.reason))
                }
            })
            .collect()
    }

    fn w(
        kind: &str,
        revision: &str,
        replicas: u32,
        reason: Option<Reason>,
    ) -> (String, String, u32, Option<Reason>) {
        (kind.into(), revision.into(), replicas, reason)
    }

    #[test]
    fn a_new_revision_is_created_beside_the_old_one() {
        let old = [pod("a", "iris-1", true), pod("b", "iris-1", true)];
        assert_eq!(
            writes_for(&old, &[("iris-1", 2)], false),
            vec![w("apply", "iris-2", 1, Some(Reason::RevisionCreated))],
            "surge 1: the new Deployment gets one replica, the old one keeps its two"
        );
    }

    #[test]
    fn a_ready_new_replica_scales_the_old_revision_down_and_the_new_one_up() {
        let pods = [
            pod("a", "iris-1", true),
            pod("b", "iris-1", true),
            pod("c", "iris-2", true),
        ];
        assert_eq!(
            writes_for(&pods, &[("iris-1", 2), ("iris-2", 1)], false),
            vec![
                w("scale", "iris-1", 1, Some(Reason::ScaledDown)),
                w("apply", "iris-2", 2, Some(Reason::ScaledUp)),
            ]
        );
    }

    #[test]
    fn the_old_revision_is_retired_once_the_new_one_is_ready() {
        let pods = [
            pod("a", "iris-1", true),
            pod("c", "iris-2", true),
            pod("d", "iris-2", true),
        ];
        assert_eq!(
            writes_for(&pods, &[("iris-1", 1), ("iris-2", 2)], false),
            vec![
                w("retire", "iris-1", 0, Some(Reason::RevisionRetired)),
                w("apply", "iris-2", 2, None),
            ]
        );
    }

    #[test]
    fn a_settled_service_applies_only_its_latest_revision_and_a_problem_nothing() {
        let pods = [pod("c", "iris-2", true), pod("d", "iris-2", true)];
        assert_eq!(
            writes_for(&pods, &[("iris-2", 2)], false),
            vec![w("apply", "iris-2", 2, None)],
            "the executor sends it only when its hash changed"
        );
        let old = [pod("a", "iris-1", true), pod("b", "iris-1", true)];
        assert_eq!(writes_for(&old, &[("iris-1", 2)], true), vec![]);
    }
}
