//! Semantic validation of an `InferenceService`: every problem, each with its field path.

use std::fmt;

use crate::{InferenceService, IntOrPercent, quantity};

/// One problem with a manifest, at a field path such as `spec.predictor.model.uri`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: &str, message: impl Into<String>) -> Self {
        FieldError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All the problems found in one object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<FieldError>);

/// Model formats Ferry's own server runs.
pub const SUPPORTED_FORMATS: &[&str] = &["onnx"];
/// The runtime name of Ferry's own model server; any other name is a ServingRuntime's.
pub const BUILTIN_RUNTIME: &str = "ferry";
/// Resources a predictor may ask for.
pub const KNOWN_RESOURCES: &[&str] = &["cpu", "memory", GPU];
/// The GPU resource name.
pub const GPU: &str = "nvidia.com/gpu";
/// Longest InferenceService name: leaves room for `-<6 hex>` revision suffixes and the
/// suffixes Kubernetes adds to Deployment pods, within the 63-character label limit.
pub const MAX_NAME_LEN: usize = 45;

/// A DNS-1035 label: lower-case alphanumerics and '-', starting with a letter.
pub fn is_dns_label(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A DNS-1123 subdomain (the names of Secrets and most other objects).
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && !part.ends_with('-')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// A model format name such as `onnx`, `pytorch` or `tensorrt`.
fn is_format_name(format: &str) -> bool {
    !format.is_empty()
        && format.len() <= 63
        && format
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn unsupported_format(format: &str) -> FieldError {
    FieldError::new(
        "spec.predictor.model.format",
        format!(
            "Unsupported value: {format:?}: Ferry's own server runs {}; other formats need a ServingRuntime that supports them (cluster mode)",
            SUPPORTED_FORMATS.join(", ")
        ),
    )
}

/// Problems of `isvc` where only Ferry's own server runs (local mode): a ServingRuntime named in
/// `spec.predictor.runtime`, or a format Ferry's server does not serve. Cluster mode resolves both
/// against the namespace's ServingRuntimes instead.
pub fn builtin_runtime_errors(isvc: &InferenceService) -> Vec<FieldError> {
    let predictor = &isvc.spec.predictor;
    let mut errors = Vec::new();
    if let Ok(crate::ModelUri::Pvc { claim, .. }) = crate::ModelUri::parse(&predictor.model.uri) {
        errors.push(FieldError::new(
            "spec.predictor.model.uri",
            format!(
                "Unsupported value: {:?}: pvc:// names a PersistentVolumeClaim {claim:?}, which only a cluster has; local mode reads a path or file://, or fetches http(s)://, s3://, gs://, oci://",
                predictor.model.uri
            ),
        ));
    }
    if let Some(secret) = &predictor.model.secret_name {
        errors.push(FieldError::new(
            "spec.predictor.model.secretName",
            format!(
                "Unsupported value: {secret:?}: local mode has no Secrets; it gives the model's fetch the environment of `ferry up` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...)"
            ),
        ));
    }
    if !predictor.needs_serving_runtime() {
        return errors;
    }
    if let Some(runtime) = predictor.runtime.as_deref()
        && is_dns_label(runtime, 63)
    {
        errors.push(FieldError::new(
            "spec.predictor.runtime",
            format!(
                "Unsupported value: {runtime:?}: local mode runs Ferry's own server (\"{BUILTIN_RUNTIME}\"); ServingRuntimes run in cluster mode (ferry operator)"
            ),
        ));
    }
    if is_format_name(&predictor.model.format)
        && !SUPPORTED_FORMATS.contains(&predictor.model.format.as_str())
    {
        errors.push(unsupported_format(&predictor.model.format));
    }
    errors
}

/// Every problem of a ServingRuntime; empty when it is valid.
pub fn validate_runtime(runtime: &crate::ServingRuntime) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match runtime.metadata.name.as_deref() {
        None | Some("") => errors.push(FieldError::new("metadata.name", "Required value")),
        Some(BUILTIN_RUNTIME) => errors.push(FieldError::new(
            "metadata.name",
            format!("Invalid value: {BUILTIN_RUNTIME:?}: names Ferry's own server"),
        )),
        Some(name) if !is_dns_label(name, 63) => errors.push(FieldError::new(
            "metadata.name",
            format!("Invalid value: {name:?}: must be a DNS label"),
        )),
        Some(_) => {}
    }
    let spec = &runtime.spec;
    if spec.containers.is_empty() {
        errors.push(FieldError::new(
            "spec.containers",
            "Required value: the first container serves",
        ));
    }
    for (i, container) in spec.containers.iter().enumerate() {
        if container.image.as_deref().is_none_or(str::is_empty) {
            errors.push(FieldError::new(
                &format!("spec.containers[{i}].image"),
                "Required value",
            ));
        }
    }
    for (i, format) in spec.supported_model_formats.iter().enumerate() {
        if !is_format_name(&format.name) {
            errors.push(FieldError::new(
                &format!("spec.supportedModelFormats[{i}].name"),
                format!(
                    "Invalid value: {:?}: lower-case letters, digits, '-', '_' and '.' only",
                    format.name
                ),
            ));
        }
    }
    for (i, protocol) in spec.protocol_versions.iter().enumerate() {
        if !matches!(protocol.as_str(), "v1" | "v2" | "grpc-v2") {
            errors.push(FieldError::new(
                &format!("spec.protocolVersions[{i}]"),
                format!(
                    "Unsupported value: {protocol:?}: supported values: \"v1\", \"v2\", \"grpc-v2\""
                ),
            ));
        }
    }
    for (field, port) in [("httpPort", spec.http_port), ("grpcPort", spec.grpc_port)] {
        if port == Some(0) {
            errors.push(FieldError::new(
                &format!("spec.{field}"),
                "Invalid value: 0: must be a port number (1-65535)",
            ));
        }
    }
    errors
}

/// Every semantic problem of `isvc`; empty when it is valid. A runtime other than Ferry's own
/// and formats other than ONNX are left to the cluster's ServingRuntimes
/// ([`builtin_runtime_errors`] refuses them where there are none).
pub fn validate(isvc: &InferenceService) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match isvc.metadata.name.as_deref() {
        None | Some("") => errors.push(FieldError::new("metadata.name", "Required value")),
        Some(name) if !is_dns_label(name, MAX_NAME_LEN) => errors.push(FieldError::new(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: must be at most {MAX_NAME_LEN} lower-case letters, digits or '-', starting with a letter"
            ),
        )),
        Some(_) => {}
    }
    if let Some(ns) = isvc.metadata.namespace.as_deref()
        && !is_dns_label(ns, 63)
    {
        errors.push(FieldError::new(
            "metadata.namespace",
            format!("Invalid value: {ns:?}: must be a DNS label"),
        ));
    }

    let predictor = &isvc.spec.predictor;
    let model = &predictor.model;
    if let Some(runtime) = predictor.runtime.as_deref()
        && !is_dns_label(runtime, 63)
    {
        errors.push(FieldError::new(
            "spec.predictor.runtime",
            format!("Invalid value: {runtime:?}: must be \"{BUILTIN_RUNTIME}\" or the name of a ServingRuntime (a DNS label)"),
        ));
    }
    if !is_format_name(&model.format) {
        errors.push(FieldError::new(
            "spec.predictor.model.format",
            format!(
                "Invalid value: {:?}: lower-case letters, digits, '-', '_' and '.' only",
                model.format
            ),
        ));
    } else if predictor.runtime.as_deref() == Some(BUILTIN_RUNTIME)
        && !SUPPORTED_FORMATS.contains(&model.format.as_str())
    {
        errors.push(unsupported_format(&model.format));
    }
    if let Err(message) = check_uri(&model.uri) {
        errors.push(FieldError::new("spec.predictor.model.uri", message));
    }
    if let Some(secret) = &model.secret_name
        && !is_dns_subdomain(secret)
    {
        errors.push(FieldError::new(
            "spec.predictor.model.secretName",
            format!("Invalid value: {secret:?}: a Secret name (lower-case DNS subdomain)"),
        ));
    }
    if let Some(name) = model.name.as_deref()
        && (name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        errors.push(FieldError::new(
            "spec.predictor.model.name",
            format!("Invalid value: {name:?}: letters, digits, '-', '_' and '.' only"),
        ));
    }

    if let Some(version) = model.runtime_version.as_deref() {
        let valid = !version.is_empty()
            && version.len() <= 128
            && version
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            errors.push(FieldError::new(
                "spec.predictor.model.runtimeVersion",
                format!("Invalid value: {version:?}: must be an image tag (letters, digits, '_', '.', '-'; at most 128)"),
            ));
        }
    }

    let min = predictor.replicas();
    if let Some(max) = predictor.max_replicas
        && max < min
    {
        errors.push(FieldError::new(
            "spec.predictor.maxReplicas",
            format!("Invalid value: {max}: must be greater than or equal to minReplicas ({min})"),
        ));
    }
    if let Some(timeout) = predictor.startup_timeout_seconds
        && !(1..=86_400).contains(&timeout)
    {
        errors.push(FieldError::new(
            "spec.predictor.startupTimeoutSeconds",
            format!("Invalid value: {timeout}: must be between 1 and 86400"),
        ));
    }
    if let Some(resources) = &predictor.resources {
        check_resources(resources, &mut errors);
    }
    crate::autoscaling::check(predictor, &mut errors);
    check_placement(predictor, &mut errors);
    crate::pool::check_pooled(isvc, &mut errors);
    if let Some(ingress) = &isvc.spec.ingress {
        check_ingress(ingress, &mut errors);
    }
    if let Some(limit) = &isvc.spec.rate_limit {
        limit.check("spec.rateLimit", &mut errors);
    }

    crate::progressive::check_canary_percent(isvc, &mut errors);
    crate::experiment::check_experiment(isvc, &mut errors);
    crate::experiment::check_shadow(isvc, &mut errors);
    if let Some(rollout) = &isvc.spec.rollout {
        crate::progressive::check(rollout, &mut errors);
        let surge = check_int_or_percent(
            rollout.max_surge.as_ref(),
            "spec.rollout.maxSurge",
            &mut errors,
        );
        let unavailable = check_int_or_percent(
            rollout.max_unavailable.as_ref(),
            "spec.rollout.maxUnavailable",
            &mut errors,
        );
        if surge == Some(true) && unavailable == Some(true) {
            errors.push(FieldError::new(
                "spec.rollout.maxUnavailable",
                "Invalid value: 0: may not be 0 when maxSurge is 0",
            ));
        }
    }
    errors
}

fn check_placement(predictor: &crate::PredictorSpec, errors: &mut Vec<FieldError>) {
    for (i, product) in predictor.gpu_products.iter().enumerate() {
        if !is_label_value(product) || product.is_empty() {
            errors.push(FieldError::new(
                &format!("spec.predictor.gpuProducts[{i}]"),
                format!("Invalid value: {product:?}: must be a node label value"),
            ));
        }
    }
    let gpus = predictor
        .resources
        .as_ref()
        .is_some_and(|r| r.limits.contains_key(GPU) || r.requests.contains_key(GPU));
    if !predictor.gpu_products.is_empty() && !gpus {
        errors.push(FieldError::new(
            "spec.predictor.gpuProducts",
            format!("Invalid value: gpuProducts needs a {GPU} limit in spec.predictor.resources"),
        ));
    }
    for (key, value) in &predictor.node_selector {
        if !is_label_value(value) {
            errors.push(FieldError::new(
                &format!("spec.predictor.nodeSelector.{key}"),
                format!("Invalid value: {value:?}: must be a label value"),
            ));
        }
    }
}

fn check_ingress(ingress: &crate::IngressSpec, errors: &mut Vec<FieldError>) {
    let host = &ingress.host;
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|label| is_dns_label(label, 63) || label.chars().all(|c| c.is_ascii_digit()));
    if !valid {
        errors.push(FieldError::new(
            "spec.ingress.host",
            format!("Invalid value: {host:?}: must be a DNS name such as iris.example.com"),
        ));
    }
    let http_route = ingress.kind == Some(crate::IngressKind::HttpRoute);
    if http_route && ingress.class_name.is_some() {
        errors.push(FieldError::new(
            "spec.ingress.className",
            "Forbidden: className is for kind Ingress; an HTTPRoute names its gateway",
        ));
    }
    if !http_route && ingress.gateway.is_some() {
        errors.push(FieldError::new(
            "spec.ingress.gateway",
            "Forbidden: gateway is for kind HTTPRoute",
        ));
    }
    if http_route && ingress.gateway.is_none() {
        errors.push(FieldError::new(
            "spec.ingress.gateway",
            "Required value: an HTTPRoute attaches to a Gateway (name or namespace/name)",
        ));
    }
}

/// A Kubernetes label value: at most 63 of letters, digits, '-', '_', '.', alphanumeric at both ends.
fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_none_or(|c| c.is_ascii_alphanumeric())
}

fn check_uri(uri: &str) -> Result<(), String> {
    crate::ModelUri::parse(uri).map(|_| ())
}

fn check_resources(resources: &crate::Resources, errors: &mut Vec<FieldError>) {
    for (section, list) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        for (name, value) in list {
            let path = format!("spec.predictor.resources.{section}.{name}");
            if !KNOWN_RESOURCES.contains(&name.as_str()) {
                errors.push(FieldError::new(
                    &path,
                    format!(
                        "Unsupported value: {name:?}: supported resources: {}",
                        KNOWN_RESOURCES.join(", ")
                    ),
                ));
                continue;
            }
            match quantity::parse(value) {
                None => errors.push(FieldError::new(
                    &path,
                    format!("Invalid value: {value:?}: must be a quantity such as 500m, 2, 1Gi"),
                )),
                Some(v) if name == "nvidia.com/gpu" && v.fract() != 0.0 => {
                    errors.push(FieldError::new(
                        &path,
                        format!("Invalid value: {value:?}: must be a whole number of GPUs"),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    for (name, request) in &resources.requests {
        let (Some(request_value), Some(limit)) = (
            quantity::parse(request),
            resources.limits.get(name).and_then(|l| quantity::parse(l)),
        ) else {
            continue;
        };
        if request_value > limit {
            errors.push(FieldError::new(
                &format!("spec.predictor.resources.requests.{name}"),
                format!(
                    "Invalid value: {request:?}: must be less than or equal to the limit {:?}",
                    resources.limits[name]
                ),
            ));
        } else if name == "nvidia.com/gpu" && request_value != limit {
            errors.push(FieldError::new(
                &format!("spec.predictor.resources.requests.{name}"),
                "Invalid value: GPU requests must equal GPU limits",
            ));
        }
    }
}

/// Checks a count-or-percentage; `Some(true)` when it is zero, `None` when invalid or absent.
fn check_int_or_percent(
    value: Option<&IntOrPercent>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> Option<bool> {
    match value? {
        IntOrPercent::Int(n) => Some(*n == 0),
        IntOrPercent::Percent(text) => {
            match text.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                Some(pct) if pct <= 100 => Some(pct == 0),
                _ => {
                    errors.push(FieldError::new(
                    path,
                    format!("Invalid value: {text:?}: must be an integer or a percentage such as \"25%\" (0-100%)"),
                ));
                    None
                }
            }
        }
    }
}
