//! One reconcile of an InferenceService: observe (the caches) → plan (`ferry_core::service`,
//! the decision both modes share) → apply (the plan's writes, `apply.rs`) → status (the
//! plan's status and events, `status.rs`).
//!
//! Reads come from reflector caches (Deployments, Services and Pods labelled
//! `app.kubernetes.io/managed-by=ferry`), so a reconcile costs no API call unless something has
//! to change: every object Ferry applies carries a hash of what was applied
//! ([`crate::controller::APPLIED_HASH`]), and an object whose cached hash matches is not sent
//! again. A second reconcile of a settled InferenceService writes nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::InferenceService;
use ferry_core::reason::{PlannedEvent, Reason};
use ferry_core::service::{self, EntryPoint, Observation, Signals};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::controller::{Error, Shared};
use crate::observe::Observed;

pub(crate) async fn reconcile(
    isvc: Arc<InferenceService>,
    shared: Arc<Shared>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&isvc, &shared).await;
    shared
        .context
        .metrics
        .record(result.is_ok(), started.elapsed());
    if let Err(Error::Invalid(message)) = &result {
        let event = PlannedEvent::new(Reason::InvalidSpec, message.clone());
        shared.event(isvc.as_ref(), &event).await;
    }
    result
}

async fn reconcile_inner(isvc: &InferenceService, shared: &Shared) -> Result<Action, Error> {
    if isvc.metadata.deletion_timestamp.is_some() {
        // Being deleted (foreground): the garbage collector removes the children; a reconcile
        // would only put them back.
        return Ok(Action::await_change());
    }
    // Decisions need complete caches (after a restart, a missing Deployment would look like a
    // rollout that has not started).
    let filled = tokio::time::timeout(Duration::from_secs(60), async {
        let _ = shared.deployments.wait_until_ready().await;
        let _ = shared.services.wait_until_ready().await;
        let _ = shared.pods.wait_until_ready().await;
        // The indexes of the same watches, filled a moment after the stores.
        shared.owned_deployments.wait_until_ready().await;
        shared.owned_pods.wait_until_ready().await;
        // Only a service on a ServingRuntime waits for that cache: one where the runtime CRD
        // is missing (its watch never lists) still serves everything on Ferry's own server.
        if isvc.spec.predictor.needs_serving_runtime() {
            let _ = shared.runtimes.wait_until_ready().await;
            let _ = shared.cluster_runtimes.wait_until_ready().await;
        }
    })
    .await;
    if filled.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if isvc.namespace().is_none() {
        return Err(Error::Invalid("InferenceService without namespace".into()));
    }
    let mut errors = ferry_api::validate::validate(isvc);
    if isvc.spec.predictor.pool.is_some() {
        errors.extend(crate::pooled::refusals(isvc));
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    if let Some(pool) = &isvc.spec.predictor.pool {
        let force = shared.due_in_full(isvc);
        let action = crate::pooled::reconcile(isvc, pool, shared, force).await?;
        if force {
            shared.applied_fully(isvc);
        }
        return Ok(action);
    }

    // Observe. Which server runs the model; without one, nothing of the new revision is
    // rendered and what serves keeps serving, while the status names the problem.
    let runtimes: Vec<ferry_api::ServingRuntime> = shared
        .runtimes
        .state()
        .iter()
        .map(|r| (**r).clone())
        .chain(
            shared
                .cluster_runtimes
                .state()
                .iter()
                .map(|c| c.as_runtime()),
        )
        .collect();
    let (runtime, runtime_problem) = match ferry_core::runtime::resolve(isvc, &runtimes) {
        Ok(runtime) => (runtime, None),
        Err(problem) => (None, Some(problem)),
    };
    let latest = ferry_core::runtime::revision(isvc, runtime);
    let now = Timestamp::now();
    let observed = Observed::read(isvc, shared, now);
    let (ingress, route_api) = if runtime_problem.is_some() {
        (None, None)
    } else {
        crate::apply::ingress_condition(isvc, shared).await
    };
    // Revisions newest first: the latest, then the others by name.
    let history: Vec<String> = std::iter::once(latest.clone())
        .chain(observed.scale.keys().filter(|r| **r != latest).cloned())
        .collect();
    let (autoscaler, keda_api) = if runtime_problem.is_some() {
        (None, None)
    } else {
        crate::apply::autoscaler_condition(isvc, shared).await
    };
    // KEDA may be installed any time: look again soon while it is missing.
    let keda_missing = autoscaler.as_ref().is_some_and(|c| !c.ok);
    let key = (isvc.namespace().unwrap_or_default(), isvc.name_any());
    let observation = Observation {
        generation: isvc.metadata.generation.unwrap_or(0),
        previous_status: isvc.status.as_ref(),
        latest: &latest,
        replicas: &observed.views,
        scale: &observed.scale,
        creation_failure: observed.creation_failure(&latest),
        ingress,
        autoscaler,
        runtime_problem,
        entry: EntryPoint::Cluster,
        quota_room: quota_room(isvc, shared),
        stalled_since: shared.stalls.lock().expect("poisoned").since(&key),
    };

    // Plan, on the router pods' numbers while a canary is in progress.
    let counted = service::needs_router_numbers(isvc);
    let (totals, rewards, shadow) = if counted {
        let (totals, rewards, shadow) = shared.collector.totals(&key.0, &key.1);
        (Some(totals), rewards, shadow)
    } else {
        (None, Default::default(), Default::default())
    };
    let autoscale = if isvc.spec.predictor.ferry_autoscaled() {
        let (loads, held) = shared.collector.load(&key.0, &key.1);
        service::autoscale(
            &mut shared.autoscalers.lock().expect("poisoned"),
            &key,
            isvc,
            &observation,
            &loads,
            held,
            now,
        )
    } else {
        None
    };
    let signals = Signals {
        autoscale,
        window: totals.as_ref().map(|current| {
            shared
                .windows
                .lock()
                .expect("poisoned")
                .window(&key, current, now)
        }),
        totals: totals.clone().unwrap_or_default(),
        rewards,
        shadow,
    };
    let plan = service::plan(isvc, &history, &observation, &signals, now);
    shared
        .stalls
        .lock()
        .expect("poisoned")
        .record(key.clone(), plan.stalling, now);
    if plan.analysed
        && let Some(current) = totals
    {
        shared
            .windows
            .lock()
            .expect("poisoned")
            .restart(key, current, now);
    }
    // A rollout's state is persisted before it is carried out (a new leader resumes from it),
    // and its decisions are events.
    let rollout_changed = plan.status.rollout.is_some()
        && isvc.status.as_ref().map(|s| &s.rollout) != Some(&plan.status.rollout);
    if rollout_changed {
        crate::status::write(isvc, &plan, shared).await?;
        for event in &plan.rollout_events {
            shared.event(isvc, event).await;
        }
    }

    // Apply.
    let force = shared.due_in_full(isvc);
    if plan.render_latest {
        let writes = crate::writes::writes(&plan);
        // The revisions' objects and the service-wide ones do not depend on each other.
        tokio::try_join!(
            crate::apply::apply_revisions(isvc, &observed, &writes, runtime, shared, force),
            crate::apply::apply_service_objects(isvc, &latest, shared, route_api, keda_api, force)
        )?;
        if force {
            shared.applied_fully(isvc);
        }
    }

    // Status.
    if let Some(wait) = crate::status::write(isvc, &plan, shared).await? {
        return Ok(Action::requeue(wait));
    }
    let rolling_out = plan
        .status
        .rollout
        .as_ref()
        .is_some_and(|r| !r.phase.is_finished());
    Ok(Action::requeue(if isvc.spec.predictor.ferry_autoscaled() {
        // The autoscaler decides on every collection of the router's numbers.
        Duration::from_millis(500)
    } else if keda_missing {
        Duration::from_secs(30)
    } else if plan.settled {
        Duration::from_secs(300)
    } else if rolling_out {
        // Pauses end and analyses fall due with time, not with an object change.
        Duration::from_secs(1)
    } else {
        Duration::from_secs(2)
    }))
}

/// How many more replicas of `isvc` its namespace's ResourceQuotas leave room for, as their
/// status says (the tightest quota's name with it).
fn quota_room(isvc: &InferenceService, shared: &Shared) -> Option<(String, u32)> {
    let namespace = isvc.namespace();
    let quotas: Vec<_> = shared
        .quotas
        .state()
        .iter()
        .filter(|q| q.namespace() == namespace)
        .map(|q| (**q).clone())
        .collect();
    ferry_core::quota::room_in_cluster(&quotas, &ferry_core::quota::Usage::replica(isvc))
}
