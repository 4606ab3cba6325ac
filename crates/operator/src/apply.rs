//! Carrying a plan out: the writes of a service's revisions ([`crate::writes`]) and its
//! service-wide objects (the stable Service, HPA, Ingress, HTTPRoute), each server-side
//! applied only when its applied-hash annotation differs from what the cache holds.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use ferry_api::InferenceService;
use ferry_core::reason::{ConditionState, PlannedEvent, Reason};
use ferry_render::{render, render_service};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::controller::{APPLIED_HASH, EXTRAS, Error, FIELD_MANAGER, Shared};
use crate::observe::Observed;
use crate::writes::Write;

/// Carry out `writes` for `isvc`'s revisions; `force` re-applies even what the hashes say is
/// unchanged (hand edits are undone).
pub(crate) async fn apply_revisions(
    isvc: &InferenceService,
    observed: &Observed,
    writes: &[Write],
    runtime: Option<&ferry_api::ServingRuntime>,
    shared: &Shared,
    force: bool,
) -> Result<(), Error> {
    let ctx = &shared.context;
    let namespace = isvc.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for write in writes {
        match write {
            Write::Retire { revision, event } => {
                let deleted = deployments
                    .delete(revision, &DeleteParams::default())
                    .await
                    .is_ok();
                let _ = services.delete(revision, &DeleteParams::default()).await;
                if deleted {
                    shared.event(isvc, event).await;
                }
            }
            Write::Scale {
                revision,
                replicas,
                event,
            } => {
                let patch = json!({"spec": {"replicas": replicas}});
                deployments
                    .patch(revision, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                shared.event(isvc, event).await;
            }
            Write::ApplyLatest {
                revision,
                replicas,
                predictor,
                event,
                quota,
            } => {
                let variant;
                let source = match predictor {
                    Some(predictor) => {
                        let mut copy = isvc.clone();
                        copy.spec.predictor = (**predictor).clone();
                        variant = copy;
                        &variant
                    }
                    None => isvc,
                };
                let mut objects = render(source, revision, *replicas, &ctx.render, runtime);
                let key = format!("deployment/{namespace}/{revision}");
                let hash = stamp(&mut objects.deployment);
                let cached = observed.deployment(revision);
                // A periodic re-apply of an unchanged object is no decision: no event.
                let decided = !shared.known(&key, cached_hash(cached), &hash);
                if decided || force {
                    deployments
                        .patch(revision, &params, &Patch::Apply(&objects.deployment))
                        .await?;
                    shared.remember(key, hash);
                }
                if decided {
                    let updated = || {
                        PlannedEvent::new(Reason::Updated, format!("revision {revision}: applied"))
                    };
                    let event = event.clone().unwrap_or_else(updated);
                    shared.event(isvc, &event).await;
                    if let Some(held) = quota {
                        shared.event(isvc, held).await;
                    }
                }
                let cached_service = shared.cached(&shared.services, &namespace, revision);
                let key = format!("service/{namespace}/{revision}");
                let hash = stamp(&mut objects.service);
                if force || !shared.known(&key, cached_hash(cached_service.as_deref()), &hash) {
                    apply_recreating(&services, revision, &objects.service, &params).await?;
                    shared.remember(key, hash);
                }
            }
        }
    }
    Ok(())
}

/// Hash of an object as it is about to be applied (without the hash annotation itself).
pub(crate) fn applied_hash<T: Serialize>(object: &T) -> String {
    let text = serde_json::to_string(object).expect("objects serialize");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Put `object`'s hash on it ([`APPLIED_HASH`]); returns the hash.
pub(crate) fn stamp<K: Resource + Serialize>(object: &mut K) -> String {
    let hash = applied_hash(object);
    object
        .annotations_mut()
        .insert(APPLIED_HASH.to_string(), hash.clone());
    hash
}

/// The hash an object in a cache carries.
pub(crate) fn cached_hash<K: Resource>(cached: Option<&K>) -> Option<&String> {
    cached.and_then(|c| c.annotations().get(APPLIED_HASH))
}

/// The IngressReady condition when the spec asks for an Ingress or an HTTPRoute, and the
/// HTTPRoute resource where the cluster serves the Gateway API.
pub(crate) async fn ingress_condition(
    isvc: &InferenceService,
    shared: &Shared,
) -> (Option<ConditionState>, Option<ApiResource>) {
    let name = isvc.name_any();
    let host = ingress_host(isvc);
    let Some(ingress) = &isvc.spec.ingress else {
        return (None, None);
    };
    if ingress.kind != Some(ferry_api::IngressKind::HttpRoute) {
        let message = format!("Ingress {name} routes {host} to Service {name}");
        return (
            Some(ConditionState::new(true, Reason::IngressCreated, message)),
            None,
        );
    }
    match shared.http_route_api().await {
        Some(resource) => {
            let message = format!("HTTPRoute {name} routes {host} to Service {name}");
            (
                Some(ConditionState::new(true, Reason::HttpRouteCreated, message)),
                Some(resource),
            )
        }
        None => (
            Some(ConditionState::new(
                false,
                Reason::GatewayApiMissing,
                "spec.ingress asks for an HTTPRoute but this cluster does not serve gateway.networking.k8s.io/v1 HTTPRoute: install the Gateway API CRDs, or use kind Ingress",
            )),
            None,
        ),
    }
}

/// The AutoscalerReady condition when KEDA scales the predictor, and the ScaledObject
/// resource where the cluster serves it.
pub(crate) async fn autoscaler_condition(
    isvc: &InferenceService,
    shared: &Shared,
) -> (Option<ConditionState>, Option<ApiResource>) {
    let predictor = &isvc.spec.predictor;
    if predictor.autoscaling_engine() != ferry_api::AutoscalingEngine::Keda {
        return (None, None);
    }
    let name = isvc.name_any();
    match shared.scaled_object_api().await {
        Some(resource) => (
            Some(ConditionState::new(
                true,
                Reason::ScaledObjectCreated,
                format!(
                    "KEDA's ScaledObject {name} scales the latest revision on the router's {}",
                    predictor.scale_metric.map_or("", |m| m.as_str())
                ),
            )),
            Some(resource),
        ),
        None => (
            Some(ConditionState::new(
                false,
                Reason::KedaMissing,
                "autoscaling.engine keda, but this cluster serves no keda.sh/v1alpha1 ScaledObject: install KEDA, or use engine ferry or hpa; the predictor keeps its current size",
            )),
            None,
        ),
    }
}

/// What the stable Service's hash covers: every optional object, so a change of any
/// re-applies them all.
#[derive(Serialize)]
struct ServiceObjectsHash<'a> {
    service: &'a Service,
    autoscaler: Option<&'a HorizontalPodAutoscaler>,
    scaled_object: Option<&'a ferry_render::keda::ScaledObject>,
    ingress: Option<&'a Ingress>,
    route: Option<&'a ferry_render::HttpRoute>,
    network_policy: &'a NetworkPolicy,
}

/// The stable Service, and the autoscaler, Ingress or HTTPRoute the spec asks for (deleting the
/// ones it no longer asks for); `route_api` is the HTTPRoute resource when the cluster has it.
pub(crate) async fn apply_service_objects(
    isvc: &InferenceService,
    latest: &str,
    shared: &Shared,
    route_api: Option<ApiResource>,
    keda_api: Option<ApiResource>,
    force: bool,
) -> Result<(), Error> {
    let client = &shared.context.client;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let params = &params;
    let namespace = isvc.namespace().unwrap_or_default();
    let name = isvc.name_any();
    let mut objects = render_service(isvc, latest);
    let mut extras = BTreeSet::new();
    if let Some(hpa) = &mut objects.autoscaler {
        extras.insert("autoscaler");
        // No cache of autoscalers: apply only when the service's own hash changes.
        stamp(hpa);
    }
    if let Some(ingress) = &mut objects.ingress {
        extras.insert("ingress");
        stamp(ingress);
    }
    if objects.http_route.is_some() && route_api.is_some() {
        extras.insert("httproute");
    }
    if objects.scaled_object.is_some() && keda_api.is_some() {
        extras.insert("scaledobject");
    }
    let hash = applied_hash(&ServiceObjectsHash {
        service: &objects.service,
        autoscaler: objects.autoscaler.as_ref(),
        scaled_object: keda_api.as_ref().and(objects.scaled_object.as_ref()),
        ingress: objects.ingress.as_ref(),
        route: route_api.as_ref().and(objects.http_route.as_ref()),
        network_policy: &objects.network_policy,
    });
    let cached = shared.cached(&shared.services, &namespace, &name);
    let key = format!("service/{namespace}/{name}");
    if !force && shared.known(&key, cached_hash(cached.as_deref()), &hash) {
        return Ok(());
    }
    let had: BTreeSet<String> = cached
        .as_ref()
        .and_then(|c| c.annotations().get(EXTRAS))
        .map(|list| {
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &namespace);
    apply_or_remove(
        &hpas,
        &name,
        objects.autoscaler.as_ref(),
        had.contains("autoscaler"),
        params,
    )
    .await?;
    // Only Ferry's namespace (the router) reaches the service's pods.
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), &namespace);
    apply_or_remove(
        &policies,
        &name,
        Some(&objects.network_policy),
        true,
        params,
    )
    .await?;
    let ingresses = Api::<Ingress>::namespaced(client.clone(), &namespace);
    apply_or_remove(
        &ingresses,
        &name,
        objects.ingress.as_ref(),
        had.contains("ingress"),
        params,
    )
    .await?;
    // Without the Gateway API there is no HTTPRoute to apply, nor one to remove.
    if let Some(resource) = match &route_api {
        Some(resource) => Some(resource.clone()),
        None if had.contains("httproute") => shared.http_route_api().await,
        None => None,
    } {
        let routes = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource);
        let route = match route_api.as_ref().and(objects.http_route.as_ref()) {
            Some(route) => Some(dynamic(&resource, &route.metadata, &route.spec)?),
            None => None,
        };
        apply_or_remove(
            &routes,
            &name,
            route.as_ref(),
            had.contains("httproute"),
            params,
        )
        .await?;
    }
    // Without KEDA there is no ScaledObject to apply, nor one to remove.
    if let Some(resource) = match &keda_api {
        Some(resource) => Some(resource.clone()),
        None if had.contains("scaledobject") => shared.scaled_object_api().await,
        None => None,
    } {
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource);
        let scaled = match keda_api.as_ref().and(objects.scaled_object.as_ref()) {
            Some(scaled) => Some(dynamic(&resource, &scaled.metadata, &scaled.spec)?),
            None => None,
        };
        apply_or_remove(
            &api,
            &name,
            scaled.as_ref(),
            had.contains("scaledobject"),
            params,
        )
        .await?;
    }
    let annotations = objects.service.annotations_mut();
    annotations.insert(APPLIED_HASH.to_string(), hash.clone());
    annotations.insert(
        EXTRAS.to_string(),
        extras.into_iter().collect::<Vec<_>>().join(","),
    );
    // A stable Service from before it was an alias of the router has a cluster IP, which an
    // update cannot drop: recreated.
    apply_recreating(
        &Api::<Service>::namespaced(client.clone(), &namespace),
        &name,
        &objects.service,
        params,
    )
    .await?;
    shared.remember(key, hash);
    Ok(())
}

/// A custom resource's typed object (`metadata` + `spec`) as the dynamic object its API takes.
fn dynamic(
    resource: &ApiResource,
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: &impl Serialize,
) -> Result<DynamicObject, serde_json::Error> {
    let mut object = DynamicObject::new(metadata.name.as_deref().unwrap_or_default(), resource);
    object.metadata = metadata.clone();
    let mut data = serde_json::Map::new();
    data.insert("spec".into(), serde_json::to_value(spec)?);
    object.data = serde_json::Value::Object(data);
    Ok(object)
}

/// Apply a Service; when the apiserver refuses it as invalid because a field it cannot change
/// differs (a revision Service from before revisions were headless keeps its cluster IP),
/// delete it and apply again.
pub(crate) async fn apply_recreating(
    api: &Api<Service>,
    name: &str,
    service: &Service,
    params: &PatchParams,
) -> Result<(), kube::Error> {
    match api.patch(name, params, &Patch::Apply(service)).await {
        Err(kube::Error::Api(e)) if e.code == 422 => {
            tracing::info!(%name, reason = %e.message, "recreating a Service the apiserver cannot update");
            api.delete(name, &DeleteParams::default()).await?;
            api.patch(name, params, &Patch::Apply(service)).await?;
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// Apply `desired` as `name`, or delete the object when the spec no longer asks for it and it
/// was there (`had`).
async fn apply_or_remove<K>(
    api: &Api<K>,
    name: &str,
    desired: Option<&K>,
    had: bool,
    params: &PatchParams,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match desired {
        Some(object) => api
            .patch(name, params, &Patch::Apply(object))
            .await
            .map(drop),
        None if had => match api.delete(name, &DeleteParams::default()).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            other => other.map(drop),
        },
        None => Ok(()),
    }
}

fn ingress_host(isvc: &InferenceService) -> String {
    isvc.spec
        .ingress
        .as_ref()
        .map(|i| i.host.clone())
        .unwrap_or_default()
}
