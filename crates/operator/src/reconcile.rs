//! The reconciler of InferenceServices.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::{InferenceService, LABEL_REVISION, LABEL_SERVICE, revision_name};
use ferry_core::render::{RenderOptions, render};
use ferry_core::rollout::{Target, plan};
use ferry_core::routes::{Endpoint, ServiceEndpoints, build};
use ferry_core::{ReplicaHealth, ReplicaView, status};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "ferry-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub render: RenderOptions,
    pub metrics: Arc<crate::probes::Metrics>,
}

/// Run the controller until the process is asked to stop.
pub async fn run(context: Context) {
    let client = context.client.clone();
    let isvcs: Api<InferenceService> = Api::all(client.clone());
    let deployments: Api<Deployment> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client);
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=ferry");
    Controller::new(isvcs, watcher::Config::default())
        .owns(deployments, managed.clone())
        .watches(pods, managed, |pod: Pod| {
            let name = pod.labels().get(LABEL_SERVICE)?.clone();
            Some(
                kube::runtime::reflector::ObjectRef::<InferenceService>::new(&name)
                    .within(&pod.namespace()?),
            )
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, Arc::new(context))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

fn error_policy(isvc: Arc<InferenceService>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(name = %isvc.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

pub(crate) fn pod_view(pod: &Pod) -> Option<(ReplicaView, Option<String>)> {
    let revision = pod.labels().get(LABEL_REVISION)?.clone();
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let crash = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| {
            c.iter().find_map(|c| {
                let waiting = c.state.as_ref()?.waiting.as_ref()?;
                (waiting.reason.as_deref() == Some("CrashLoopBackOff")).then(|| {
                    let last = c.last_state.as_ref().and_then(|l| l.terminated.as_ref());
                    (
                        c.restart_count as u32,
                        last.map(|t| {
                            format!(
                                "exit code {}: {}",
                                t.exit_code,
                                t.message.clone().unwrap_or_default()
                            )
                        })
                        .unwrap_or_default(),
                    )
                })
            })
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
    let health = match (ready, crash, unschedulable) {
        (true, _, _) => ReplicaHealth::Ready,
        (false, Some((restarts, last_exit)), _) => ReplicaHealth::CrashLoop {
            restarts,
            last_exit,
        },
        (false, None, Some(message)) => ReplicaHealth::Unschedulable { message },
        (false, None, None) => ReplicaHealth::Starting { for_seconds: 0 },
    };
    Some((
        ReplicaView {
            id: pod.name_any(),
            revision,
            health,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        },
        status.and_then(|s| s.pod_ip.clone()),
    ))
}

async fn reconcile(isvc: Arc<InferenceService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(isvc, &ctx).await;
    ctx.metrics.record(result.is_ok(), started.elapsed());
    result
}

async fn reconcile_inner(isvc: Arc<InferenceService>, ctx: &Context) -> Result<Action, Error> {
    let namespace = isvc
        .namespace()
        .ok_or_else(|| Error::Invalid("InferenceService without namespace".into()))?;
    let name = isvc.name_any();
    let errors = ferry_api::validate::validate(&isvc);
    if !errors.is_empty() {
        return Err(Error::Invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    let revision = revision_name(&name, &isvc.spec.predictor);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = ListParams::default().labels(&format!("{LABEL_SERVICE}={name}"));
    let existing = deployments.list(&selector).await?.items;
    let pod_list = pods.list(&selector).await?.items;
    let seen: Vec<(ReplicaView, Option<String>)> = pod_list.iter().filter_map(pod_view).collect();
    let views: Vec<ReplicaView> = seen.iter().map(|(v, _)| v.clone()).collect();

    // The core decides the next step over pods; the step becomes Deployment replica counts.
    let target = Target::from_spec(&revision, &isvc.spec);
    let step = plan(&target, &views);
    let mut replicas: BTreeMap<String, i32> = existing
        .iter()
        .filter_map(|d| {
            Some((
                d.labels().get(LABEL_REVISION)?.clone(),
                d.spec.as_ref()?.replicas.unwrap_or(0),
            ))
        })
        .collect();
    let current_new = replicas.get(&revision).copied().unwrap_or(0);
    let live_new = views
        .iter()
        .filter(|v| v.revision == revision && !v.terminating)
        .count() as i32;
    let new_count = current_new
        .max(live_new + step.start as i32)
        .min(target.replicas as i32);
    replicas.insert(revision.clone(), new_count);
    for stopped in &step.stop {
        if let Some(view) = views.iter().find(|v| &v.id == stopped)
            && view.revision != revision
            && let Some(count) = replicas.get_mut(&view.revision)
        {
            *count = (*count - 1).max(0);
        }
    }

    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (rev, count) in &replicas {
        if rev != &revision
            && *count == 0
            && !views.iter().any(|v| &v.revision == rev && !v.terminating)
        {
            // A drained revision: its objects go.
            let _ = deployments.delete(rev, &DeleteParams::default()).await;
            let _ = services.delete(rev, &DeleteParams::default()).await;
            continue;
        }
        let objects = if rev == &revision {
            render(&isvc, rev, *count as u32, &ctx.render)
        } else {
            // Older revisions keep their template: only their replica count changes (a merge
            // patch: an apply of just `replicas` would drop the template this manager owns).
            let patch = json!({"spec": {"replicas": count}});
            deployments
                .patch(rev, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            continue;
        };
        deployments
            .patch(rev, &params, &Patch::Apply(&objects.deployment))
            .await?;
        services
            .patch(rev, &params, &Patch::Apply(&objects.service))
            .await?;
    }

    // Status from the same pods, through the core.
    let endpoints: Vec<Endpoint> = seen
        .iter()
        .filter_map(|(view, ip)| {
            let ip: std::net::IpAddr = ip.as_ref()?.parse().ok()?;
            Some(Endpoint {
                replica: view.clone(),
                http: (ip, ferry_core::render::HTTP_PORT).into(),
                grpc: (ip, ferry_core::render::GRPC_PORT).into(),
            })
        })
        .collect();
    let table = build(&[ServiceEndpoints {
        namespace: namespace.clone(),
        service: name.clone(),
        model: isvc.model_name(),
        endpoints,
    }]);
    let mut order: Vec<String> = vec![revision.clone()];
    order.extend(replicas.keys().filter(|r| **r != revision).cloned());
    let observed = status::Observed {
        generation: isvc.metadata.generation.unwrap_or(0),
        target: &target,
        replicas: &views,
        route: table.lookup(&namespace, &isvc.model_name()),
        startup_timeout_seconds: u64::from(isvc.spec.predictor.startup_timeout_seconds()),
        url: format!(
            "http://{name}.{namespace}.svc/v2/models/{}",
            isvc.model_name()
        ),
        revision_order: &order,
        creation_failure: existing
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(revision.as_str()))
            .and_then(|d| d.status.as_ref()?.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                    .map(|c| {
                        c.message
                            .clone()
                            .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
                    })
            }),
    };
    let now = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let next = status::derive(&observed, isvc.status.as_ref(), &now);
    if isvc.status.as_ref() != Some(&next) {
        let isvcs: Api<InferenceService> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({"apiVersion": ferry_api::API_VERSION, "kind": "InferenceService", "status": next});
        isvcs
            .patch_status(&name, &params, &Patch::Apply(&patch))
            .await?;
    }
    let settled = ferry_core::rollout::complete(&target, &views) && replicas.len() == 1;
    Ok(Action::requeue(if settled {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(2)
    }))
}
