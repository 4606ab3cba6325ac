//! Writing a plan's status: the status subresource by server-side apply (transitions at once,
//! progress alone at most every [`PROGRESS_EVERY`]), and the event the transition is worth.

use std::time::Duration;

use ferry_api::{InferenceService, InferenceServiceStatus};
use ferry_core::reason::PlannedEvent;
use ferry_core::service::ServicePlan;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::apply::applied_hash;
use crate::controller::{Error, FIELD_MANAGER, PROGRESS_EVERY, Shared};

/// The apply document of the status subresource.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: &'a str,
    kind: &'a str,
    status: &'a InferenceServiceStatus,
}

/// Write `plan`'s status when it changed; `Some(wait)` when a progress-only change waits for
/// the next write slot.
pub(crate) async fn write(
    isvc: &InferenceService,
    plan: &ServicePlan,
    shared: &Shared,
) -> Result<Option<Duration>, Error> {
    let events: Vec<&PlannedEvent> = plan
        .autoscale_events
        .iter()
        .chain(&plan.spec_event)
        .chain(&plan.status_event)
        .collect();
    write_status(isvc, &plan.status, plan.progress_only, &events, shared).await
}

/// Write `next` when it changed, then `events`; `progress_only` changes wait for their slot.
pub(crate) async fn write_status(
    isvc: &InferenceService,
    next: &InferenceServiceStatus,
    progress_only: bool,
    events: &[&PlannedEvent],
    shared: &Shared,
) -> Result<Option<Duration>, Error> {
    let namespace = isvc.namespace().unwrap_or_default();
    let name = isvc.name_any();
    let status_key = format!("status/{namespace}/{name}");
    let status_hash = {
        // Transition times follow the (possibly stale) previous status: not part of the identity.
        let mut timeless = next.clone();
        for c in &mut timeless.conditions {
            c.last_transition_time = None;
        }
        applied_hash(&timeless)
    };
    // The cached InferenceService may not show the status this operator wrote a moment ago.
    let written = shared.known(&status_key, None, &status_hash);
    if isvc.status.as_ref() == Some(next) || written {
        return Ok(None);
    }
    // Progress alone is written at most every PROGRESS_EVERY: a thousand services starting at
    // once would otherwise each write a status for every pod that appears.
    if progress_only
        && let Some(since) = shared.since_written(&status_key)
        && since < PROGRESS_EVERY
    {
        return Ok(Some(PROGRESS_EVERY - since));
    }
    let isvcs: Api<InferenceService> = Api::namespaced(shared.context.client.clone(), &namespace);
    let apply = StatusApply {
        api_version: ferry_api::API_VERSION,
        kind: "InferenceService",
        status: next,
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    isvcs
        .patch_status(&name, &params, &Patch::Apply(&apply))
        .await?;
    shared.remember(status_key, status_hash);
    for event in events {
        shared.event(isvc, event).await;
    }
    Ok(None)
}
