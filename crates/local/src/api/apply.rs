//! The control API's writes of documents and their audit trail: `POST /v1/apply` (and its dry
//! run, what `ferry diff` shows) and `GET /v1/history`.

use axum::Json;
use axum::extract::{Query, State};
use ferry_api::InferenceService;
use serde::Deserialize;

use super::ApiState;
use crate::store::Store;
use crate::wire::{ApplyRequest, ApplyResponse, ApplyResult, Items};
use crate::{Error, Result};

pub(super) async fn apply(
    State(state): State<ApiState>,
    Json(request): Json<ApplyRequest>,
) -> Result<Json<ApplyResponse>> {
    let manifests = ferry_api::parse_local_manifests(&request.manifests, &request.namespace)?;
    let quotas = manifests.quotas;
    let namespaces = manifests.namespaces;
    let pools = manifests.pools;
    let objects: Vec<InferenceService> = manifests.services.into_iter().map(|m| m.isvc).collect();
    check_model_names(&state.store, &objects)?;
    crate::quotas::check_apply(&state.store, &objects, &quotas)?;
    let actor = state.actor(request.cause.as_deref().unwrap_or("apply"));
    let outcomes = state.store.apply_documents(
        &actor,
        request.dry_run,
        &objects,
        &quotas,
        &namespaces,
        &pools,
    )?;
    let crate::store::ApplyOutcomes {
        services: outcomes,
        quotas: quota_outcomes,
        namespaces: namespace_outcomes,
        pools: pool_outcomes,
        changes,
    } = outcomes;
    if !request.dry_run {
        state.changed.notify_one();
    }
    if !namespaces.is_empty() && !request.dry_run {
        // A namespace's rate limit holds once the apply returns.
        state.keys.reload(&state.store)?;
        state.router.caught_up().await;
    }
    let namespaces = namespaces
        .iter()
        .zip(namespace_outcomes)
        .map(|(n, result)| crate::wire::NamespaceApplied {
            name: n.metadata.name.clone().unwrap_or_default(),
            result,
        })
        .collect();
    let quotas = quotas
        .iter()
        .zip(quota_outcomes)
        .map(|(q, result)| crate::wire::QuotaApplied {
            namespace: q.metadata.namespace.clone().unwrap_or_default(),
            name: q.metadata.name.clone().unwrap_or_default(),
            result,
        })
        .collect();
    let pools = pools
        .iter()
        .zip(pool_outcomes)
        .map(|(p, result)| crate::wire::QuotaApplied {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            result,
        })
        .collect();
    let results = objects
        .iter()
        .zip(outcomes)
        .map(|(isvc, (result, revision))| ApplyResult {
            namespace: isvc.namespace_or_default(),
            name: isvc.metadata.name.clone().unwrap_or_default(),
            result,
            revision,
        })
        .collect();
    Ok(Json(ApplyResponse {
        results,
        quotas,
        namespaces,
        pools,
        changes,
    }))
}

#[derive(Deserialize)]
pub(super) struct HistoryQuery {
    #[serde(default = "inference_service")]
    kind: String,
    #[serde(default)]
    namespace: String,
    name: String,
}

fn inference_service() -> String {
    "InferenceService".into()
}

/// The audit trail of one object, kept after it is deleted; 404 when it never changed.
pub(super) async fn history(
    State(state): State<ApiState>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Items<crate::wire::ChangeRow>>> {
    let namespace = if query.kind == "Namespace" {
        String::new()
    } else {
        query.namespace
    };
    let items = state.store.changes(&query.kind, &namespace, &query.name)?;
    if items.is_empty() {
        return Err(Error::NotFound {
            kind: match query.kind.as_str() {
                "ServerPool" => "history of ServerPool",
                "ResourceQuota" => "history of ResourceQuota",
                "Namespace" => "history of Namespace",
                _ => "history of InferenceService",
            },
            namespace,
            name: query.name,
        });
    }
    Ok(Json(Items { items }))
}

/// Requests are routed by (namespace, model name): two services may not claim the same one.
fn check_model_names(store: &Store, objects: &[InferenceService]) -> Result<()> {
    let existing = store.services()?;
    let mut claimed: Vec<(String, String, String)> = existing
        .iter()
        .filter(|s| !s.deleted)
        .map(|s| (s.namespace(), s.isvc.model_name(), s.name()))
        .collect();
    for isvc in objects {
        let (ns, model, name) = (
            isvc.namespace_or_default(),
            isvc.model_name(),
            isvc.metadata.name.clone().unwrap_or_default(),
        );
        claimed.retain(|(n, _, owner)| !(n == &ns && owner == &name));
        if let Some((_, _, owner)) = claimed.iter().find(|(n, m, _)| n == &ns && m == &model) {
            return Err(Error::Conflict(format!(
                "InferenceService {ns}/{name}: spec.predictor.model.name: model name {model:?} is already served by InferenceService {ns}/{owner}"
            )));
        }
        claimed.push((ns, model, name));
    }
    Ok(())
}
