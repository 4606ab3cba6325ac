//! Kubernetes `v1 ResourceQuota` documents as local mode takes them (in a cluster they are the
//! real thing): the resources Ferry counts, checked by field.

use k8s_openapi::api::core::v1::ResourceQuota;
use serde_json::Value;

use crate::validate::FieldError;

/// The resources a quota may limit here: `pods` counts replicas (surging ones too),
/// `requests.*` / `limits.*` sum each replica's resources (`cpu` and `memory` are
/// `requests.cpu` and `requests.memory`, as in Kubernetes), and the InferenceService count.
pub const QUOTA_RESOURCES: &[&str] = &[
    "pods",
    "count/pods",
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "requests.nvidia.com/gpu",
    "limits.cpu",
    "limits.memory",
    "limits.nvidia.com/gpu",
    "count/inferenceservices.ferry.dev",
];

/// The document as a typed ResourceQuota, or every problem with its field path.
pub fn parse_quota(
    value: &Value,
    default_namespace: &str,
) -> Result<ResourceQuota, Vec<FieldError>> {
    let quota: ResourceQuota =
        crate::manifest::typed(value.clone(), default_namespace).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    match quota.metadata.name.as_deref() {
        None | Some("") => errors.push(FieldError::new("metadata.name", "Required value")),
        Some(name) if !crate::validate::is_dns_subdomain(name) => errors.push(FieldError::new(
            "metadata.name",
            format!("Invalid value: {name:?}: must be a DNS subdomain"),
        )),
        Some(_) => {}
    }
    let spec = quota.spec.clone().unwrap_or_default();
    if spec.scopes.as_ref().is_some_and(|s| !s.is_empty()) {
        errors.push(FieldError::new(
            "spec.scopes",
            "Unsupported value: scopes are not supported in local mode",
        ));
    }
    if spec.scope_selector.is_some() {
        errors.push(FieldError::new(
            "spec.scopeSelector",
            "Unsupported value: scope selectors are not supported in local mode",
        ));
    }
    let hard = spec.hard.unwrap_or_default();
    if hard.is_empty() {
        errors.push(FieldError::new(
            "spec.hard",
            "Required value: what the quota limits",
        ));
    }
    for (resource, amount) in &hard {
        let path = format!("spec.hard.{resource}");
        if !QUOTA_RESOURCES.contains(&resource.as_str()) {
            errors.push(FieldError::new(
                &path,
                format!(
                    "Unsupported value: {resource:?}: local mode counts {}",
                    QUOTA_RESOURCES.join(", ")
                ),
            ));
        } else if crate::quantity::parse(&amount.0).is_none_or(|v| v < 0.0) {
            errors.push(FieldError::new(
                &path,
                format!("Invalid value: {:?}: not a quantity", amount.0),
            ));
        }
    }
    if errors.is_empty() {
        Ok(quota)
    } else {
        Err(errors)
    }
}
