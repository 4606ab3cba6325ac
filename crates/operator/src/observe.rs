//! What the operator observes of one InferenceService, from its caches: each revision's
//! Deployment replica count, its pods as [`ReplicaView`]s with their addresses, and why the
//! latest revision's pods cannot be created when a ReplicaSet says so.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_api::{InferenceService, LABEL_REVISION};
use ferry_core::reason::Reason;
use ferry_core::routes::Addresses;
use ferry_core::{ReplicaHealth, ReplicaView};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::controller::Shared;

/// One InferenceService's objects as the caches hold them.
pub(crate) struct Observed {
    pub deployments: Vec<Arc<Deployment>>,
    /// Its pods.
    pub views: Vec<ReplicaView>,
    /// Each revision's Deployment `spec.replicas`.
    pub scale: BTreeMap<String, u32>,
}

impl Observed {
    /// Read `isvc`'s objects from the caches, at `now`.
    pub fn read(isvc: &InferenceService, shared: &Shared, now: Timestamp) -> Observed {
        let namespace = isvc.namespace().unwrap_or_default();
        let name = isvc.name_any();
        let deployments: Vec<Arc<Deployment>> = shared
            .owned_deployments
            .names(&namespace, &name)
            .iter()
            .filter_map(|n| shared.cached(&shared.deployments, &namespace, n))
            .collect();
        let views = shared
            .owned_pods
            .names(&namespace, &name)
            .iter()
            .filter_map(|n| shared.cached(&shared.pods, &namespace, n))
            .filter_map(|p| pod_view(&p, now).map(|(view, _)| view))
            .collect();
        let scale = deployments
            .iter()
            .filter_map(|d| {
                Some((
                    d.labels().get(LABEL_REVISION)?.clone(),
                    d.spec.as_ref()?.replicas.unwrap_or(0).max(0) as u32,
                ))
            })
            .collect();
        Observed {
            deployments,
            views,
            scale,
        }
    }

    /// The cached Deployment of `revision`.
    pub fn deployment(&self, revision: &str) -> Option<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(revision))
            .map(AsRef::as_ref)
    }

    /// Why `revision`'s ReplicaSet cannot create pods (`ReplicaFailure`: a ResourceQuota, an
    /// admission webhook), when its Deployment says so.
    pub fn creation_failure(&self, revision: &str) -> Option<String> {
        let conditions = self
            .deployment(revision)?
            .status
            .as_ref()?
            .conditions
            .as_ref()?;
        conditions
            .iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .map(|c| {
                c.message
                    .clone()
                    .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
            })
    }
}

/// Seconds a pod that is not ready has been so: since its Ready condition last changed, or
/// since it was created when it has none.
fn starting_for(pod: &Pod, now: Timestamp) -> u64 {
    let ready_since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref());
    let since = ready_since.or(pod.metadata.creation_timestamp.as_ref());
    since.map_or(0, |t| now.duration_since(t.0).as_secs().max(0) as u64)
}

/// One pod as the decisions see it, at `now`: its revision, health (a pod not ready yet is
/// starting since its Ready condition last changed, or since it was created) and addresses.
pub(crate) fn pod_view(pod: &Pod, now: Timestamp) -> Option<(ReplicaView, Option<Addresses>)> {
    let revision = pod.labels().get(LABEL_REVISION)?.clone();
    Some(pod_view_as(pod, now, revision))
}

/// How often a pod's containers have restarted (the kubelet's counts, summed).
pub(crate) fn restarts(pod: &Pod) -> u32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count.max(0) as u32).sum())
}

/// [`pod_view`] of a pod that is not a revision's (a pool server's), as `revision`.
pub(crate) fn pod_view_as(
    pod: &Pod,
    now: Timestamp,
    revision: String,
) -> (ReplicaView, Option<Addresses>) {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    // Init containers first: a model fetch that fails in the init step is the pod's problem.
    let containers: Vec<&k8s_openapi::api::core::v1::ContainerStatus> = status
        .and_then(|s| s.init_container_statuses.as_deref())
        .unwrap_or_default()
        .iter()
        .chain(
            status
                .and_then(|s| s.container_statuses.as_deref())
                .unwrap_or_default(),
        )
        .collect();
    let crash = containers.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        (waiting.reason.as_deref() == Some("CrashLoopBackOff")).then(|| {
            let last = c.last_state.as_ref().and_then(|l| l.terminated.as_ref());
            (
                c.restart_count as u32,
                last.map(|t| {
                    let message = t.message.clone().unwrap_or_default();
                    let message = message.trim();
                    if message.is_empty() {
                        format!("exit code {}", t.exit_code)
                    } else {
                        format!("exit code {}: {message}", t.exit_code)
                    }
                })
                .unwrap_or_default(),
            )
        })
    });
    let container_failure = containers.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = Reason::container_failure(waiting.reason.as_deref()?)?;
        Some((reason, waiting.message.clone().unwrap_or_default()))
    });
    let unschedulable = status.and_then(|s| s.conditions.as_ref()).and_then(|c| {
        c.iter()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .map(|c| c.message.clone().unwrap_or_default())
    });
    let health = match (ready, crash, container_failure, unschedulable) {
        (true, ..) => ReplicaHealth::Ready,
        (false, Some((restarts, last_exit)), ..) => ReplicaHealth::CrashLoop {
            restarts,
            last_exit,
        },
        (false, None, Some((reason, message)), _) => {
            ReplicaHealth::ContainerFailed { reason, message }
        }
        (false, None, None, Some(message)) => ReplicaHealth::Unschedulable { message },
        (false, None, None, None) => ReplicaHealth::Starting {
            for_seconds: starting_for(pod, now),
        },
    };
    // Where its model server answers: the pod IP (none yet, or one that does not parse: none),
    // on Ferry's server's ports or those a ServingRuntime's pod is annotated with.
    let addrs = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| {
            let (http, grpc) = ferry_render::pod_ports(pod.annotations());
            Addresses::tcp((ip, http).into(), (ip, grpc).into())
        });
    (
        ReplicaView {
            id: pod.name_any(),
            revision,
            health,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        },
        addrs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "iris-abc123-x", "labels": {LABEL_REVISION: "iris-abc123"}},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn pods_say_what_keeps_them_from_serving() {
        let waiting = |reason: &str, message: &str| {
            pod(json!({"containerStatuses": [{
                "name": "server", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": reason, "message": message}},
                "lastState": {"terminated": {"exitCode": 3, "message": "ferry server: model iris failed to load\n"}}
            }]}))
        };
        let now: Timestamp = "2026-12-01T10:00:30Z".parse().unwrap();
        let health = |p: &Pod| pod_view(p, now).unwrap().0.health;
        assert_eq!(
            health(&waiting("CrashLoopBackOff", "back-off 8s")),
            ReplicaHealth::CrashLoop {
                restarts: 4,
                last_exit: "exit code 3: ferry server: model iris failed to load".into()
            }
        );
        assert_eq!(
            health(&waiting(
                "ImagePullBackOff",
                "Back-off pulling image \"ferry:nope\""
            )),
            ReplicaHealth::ContainerFailed {
                reason: Reason::ImagePullBackOff,
                message: "Back-off pulling image \"ferry:nope\"".into()
            }
        );
        assert_eq!(
            health(&waiting("ContainerCreating", "")),
            ReplicaHealth::Starting { for_seconds: 0 }
        );
        // Starting since its Ready condition last changed, else since it was created: the
        // deadline of startupTimeoutSeconds can pass in a cluster too.
        let mut loading = pod(json!({"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-12-01T10:00:10Z"}
        ]}));
        assert_eq!(
            health(&loading),
            ReplicaHealth::Starting { for_seconds: 20 }
        );
        loading.status = None;
        loading.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-01T10:00:00Z".parse().unwrap(),
            ));
        assert_eq!(
            health(&loading),
            ReplicaHealth::Starting { for_seconds: 30 }
        );
        let unscheduled = pod(json!({"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/5 nodes are available: 2 Insufficient nvidia.com/gpu."
        }]}));
        assert!(
            matches!(health(&unscheduled), ReplicaHealth::Unschedulable { message } if message.contains("nvidia.com/gpu"))
        );
        let ready =
            pod(json!({"podIP": "127.2.0.5", "conditions": [{"type": "Ready", "status": "True"}]}));
        let (view, addrs) = pod_view(&ready, now).unwrap();
        let addrs = addrs.unwrap();
        assert_eq!(view.health, ReplicaHealth::Ready);
        assert_eq!(
            (addrs.http.to_string(), addrs.grpc.to_string()),
            ("127.2.0.5:8080".into(), "127.2.0.5:9000".into())
        );
        // A ServingRuntime's pod says where it serves.
        let mut runtime_pod = ready.clone();
        runtime_pod.metadata.annotations = Some(
            [
                ("ferry.dev/http-port".to_string(), "8500".to_string()),
                ("ferry.dev/grpc-port".to_string(), "9500".to_string()),
            ]
            .into(),
        );
        let addrs = pod_view(&runtime_pod, now).unwrap().1.unwrap();
        assert_eq!(
            (addrs.http.to_string(), addrs.grpc.to_string()),
            ("127.2.0.5:8500".into(), "127.2.0.5:9500".into())
        );
        let mut no_ip = ready.clone();
        no_ip.status.as_mut().unwrap().pod_ip = Some("not-an-ip".into());
        assert!(pod_view(&no_ip, now).unwrap().1.is_none());
    }
}
