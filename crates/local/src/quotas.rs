//! ResourceQuotas in local mode, carried out with `ferry_core::quota`'s arithmetic: an apply
//! that would exceed one is refused whole (403, as a cluster's API server answers); a
//! namespace's usage counts the replica processes that exist (surging ones too); the room
//! left holds a rollout's surge and an autoscaler's scale-up.

use std::collections::{BTreeMap, BTreeSet};

use ferry_api::InferenceService;
use ferry_api::k8s_openapi::api::core::v1::ResourceQuota;
use ferry_core::quota::{self, Usage};

use crate::store::{ReplicaRow, ServiceRow, Store};
use crate::wire::QuotaInfo;
use crate::{Error, Result};

/// Refuse the apply of `objects` and `quotas` when a quota (as it will be) does not allow the
/// services at their replicas beside the namespace's others.
pub fn check_apply(
    store: &Store,
    objects: &[InferenceService],
    quotas: &[ResourceQuota],
) -> Result<()> {
    let services = store.services()?;
    let mut namespaces: BTreeSet<String> =
        objects.iter().map(|o| o.namespace_or_default()).collect();
    namespaces.extend(quotas.iter().filter_map(|q| q.metadata.namespace.clone()));
    for namespace in namespaces {
        let mut in_force: BTreeMap<String, ResourceQuota> = store
            .quotas(Some(&namespace))?
            .into_iter()
            .map(|q| (q.metadata.name.clone().unwrap_or_default(), q))
            .collect();
        for quota in quotas
            .iter()
            .filter(|q| q.metadata.namespace.as_deref() == Some(&namespace))
        {
            in_force.insert(
                quota.metadata.name.clone().unwrap_or_default(),
                quota.clone(),
            );
        }
        if in_force.is_empty() {
            continue;
        }
        let in_force: Vec<ResourceQuota> = in_force.into_values().collect();
        let applied: Vec<&InferenceService> = objects
            .iter()
            .filter(|o| o.namespace_or_default() == namespace)
            .collect();
        let replaced = |row: &ServiceRow| {
            applied
                .iter()
                .any(|o| o.metadata.name.as_deref() == Some(&row.name()))
        };
        let used = services
            .iter()
            .filter(|s| !s.deleted && s.namespace() == namespace && !replaced(s))
            .fold(Usage::default(), |sum, s| {
                sum.plus(&Usage::of(&s.isvc, s.isvc.spec.predictor.replicas()))
            });
        let asked = applied.iter().fold(Usage::default(), |sum, o| {
            sum.plus(&Usage::of(o, o.spec.predictor.replicas()))
        });
        quota::check(&in_force, &used, &asked, &applied)
            .map_err(|e| Error::Forbidden(format!("namespace {namespace}: {e}")))?;
    }
    Ok(())
}

/// What `namespace` uses now: its services, and each replica process that exists.
pub fn usage(services: &[ServiceRow], rows: &[ReplicaRow], namespace: &str) -> Usage {
    let mut used = Usage::default();
    for service in services.iter().filter(|s| s.namespace() == namespace) {
        if !service.deleted {
            used = used.plus(&Usage::of(&service.isvc, 0));
        }
        let replicas = rows
            .iter()
            .filter(|r| r.namespace == namespace && r.service == service.name())
            .count();
        used = used.plus(
            &Usage::replica(&service.isvc).times(u32::try_from(replicas).unwrap_or(u32::MAX)),
        );
    }
    used
}

/// `ferry get quota`: each quota's used / hard per resource.
pub fn info(store: &Store, namespace: &str) -> Result<Vec<QuotaInfo>> {
    let services = store.services()?;
    let rows = store.replicas()?;
    let used = usage(&services, &rows, namespace);
    Ok(store
        .quotas(Some(namespace))?
        .iter()
        .map(|q| QuotaInfo {
            namespace: namespace.to_string(),
            name: q.metadata.name.clone().unwrap_or_default(),
            resources: quota::table(q, &used),
        })
        .collect())
}
