//! The reconcile of an InferenceService placed on a ServerPool (`spec.predictor.pool`): no
//! replicas of its own (any from before it moved to the pool are deleted), its stable Service
//! (the status URL), and its status from the pool's recorded placement
//! ([`ferry_core::pool::recorded_copies`]: the servers holding its model as its replicas) or
//! the pool's reason for not placing it. A change of the pool's status triggers this reconcile.

use std::time::Duration;

use ferry_api::{InferenceService, ModelUri, ServerPool};
use ferry_core::pool;
use ferry_core::service::EntryPoint;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::controller::{Error, Shared};
use crate::observe::Observed;

/// Why a pooled InferenceService cannot be served by a shared server, when it cannot.
pub(crate) fn refusals(isvc: &InferenceService) -> Vec<ferry_api::FieldError> {
    let model = &isvc.spec.predictor.model;
    let mut errors = Vec::new();
    if matches!(ModelUri::parse(&model.uri), Ok(ModelUri::Pvc { .. })) {
        errors.push(ferry_api::FieldError::new(
            "spec.predictor.model.uri",
            "Unsupported value: a pooled model is read by shared servers that mount no claim of its own: a path on the node or a store URI (s3://, gs://, http(s)://, oci://)",
        ));
    }
    if model.secret_name.is_some() {
        errors.push(ferry_api::FieldError::new(
            "spec.predictor.model.secretName",
            "Unsupported value: a pool's servers are shared, and one service's store credentials are not given to them",
        ));
    }
    errors
}

pub(crate) async fn reconcile(
    isvc: &InferenceService,
    pool_name: &str,
    shared: &Shared,
    force: bool,
) -> Result<Action, Error> {
    let namespace = isvc.namespace().unwrap_or_default();
    let now = Timestamp::now();
    let revision = ferry_core::runtime::revision(isvc, None);

    // Its own replicas, from before it moved to the pool, go.
    let observed = Observed::read(isvc, shared, now);
    let deployments: Api<Deployment> = Api::namespaced(shared.context.client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(shared.context.client.clone(), &namespace);
    for deployment in &observed.deployments {
        let name = deployment.name_any();
        deployments.delete(&name, &DeleteParams::default()).await?;
        let _ = services.delete(&name, &DeleteParams::default()).await;
    }
    let (_, route_api) = crate::apply::ingress_condition(isvc, shared).await;
    crate::apply::apply_service_objects(isvc, &revision, shared, route_api, None, force).await?;

    let pool: Option<std::sync::Arc<ServerPool>> = shared
        .pools
        .get(&ObjectRef::new(pool_name).within(&namespace));
    let model = isvc.model_name();
    let copies = pool
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .map(|s| pool::recorded_copies(s, &model, &revision))
        .unwrap_or_default();
    let problem = pool::recorded_problem(pool.as_deref(), pool_name, &model);
    let status = pool::service_status(
        isvc,
        &revision,
        &copies,
        problem,
        isvc.status.as_ref(),
        EntryPoint::Cluster.url(isvc),
        &ferry_core::service::timestamp(now),
    );
    let event = ferry_core::status::transition_event(isvc.status.as_ref(), &status);
    let events: Vec<_> = event.iter().collect();
    if let Some(wait) = crate::status::write_status(isvc, &status, false, &events, shared).await? {
        return Ok(Action::requeue(wait));
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}
