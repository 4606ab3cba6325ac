//! KServe's runtime documents, `serving.kserve.io/v1alpha1` `ServingRuntime` and
//! `ClusterServingRuntime`, converted to Ferry's of the same kind (`ferry.dev/v1alpha1`), as a
//! KServe user brings them from KServe's `config/runtimes`.
//!
//! Kept: `supportedModelFormats` (`name`, `version`, `autoSelect` — false when absent, as in
//! KServe —, `priority`), `protocolVersions` (`v1`, `v2`, `grpc-v2`), `containers` (their
//! security contexts, env, args, resources as written), `annotations` (on the pods),
//! `volumes`, `imagePullSecrets`, `disabled`, `multiModel: false`. KServe's ports: REST on 8080,
//! and gRPC on 9000 when `grpc-v2` is listed (KServe's runtimes listen there).
//!
//! The placeholders KServe fills from the InferenceService — `{{.Name}}`, `{{.Namespace}}`,
//! `{{.Labels.KEY}}`, `{{.Annotations.KEY}}` in a container's `args`, `command` and env values
//! — are kept and filled when the pod is rendered; any other `{{...}}` is refused by field.
//! Every other field is refused by name with the reason.

use serde_json::{Map, Value, json};

use crate::validate::FieldError;

/// `apiVersion` of KServe's runtime documents.
pub const KSERVE_RUNTIME_API_VERSION: &str = "serving.kserve.io/v1alpha1";

/// KServe's REST and gRPC ports in a runtime's container.
pub const KSERVE_HTTP_PORT: u16 = 8080;
pub const KSERVE_GRPC_PORT: u16 = 9000;

const KEPT: &[&str] = &[
    "supportedModelFormats",
    "protocolVersions",
    "containers",
    "annotations",
    "volumes",
    "imagePullSecrets",
    "disabled",
    "multiModel",
];

/// Why a KServe runtime field is refused.
fn refusal(field: &str) -> &'static str {
    match field {
        "builtInAdapter" | "grpcEndpoint" | "grpcDataEndpoint" => {
            "ModelMesh's adapter fields: Ferry runs one model per runtime pod; remove it"
        }
        "storageHelper" => {
            "Ferry always fetches the model (the init step, through the node's cache); remove it"
        }
        "nodeSelector" | "tolerations" | "affinity" => {
            "placement belongs on the InferenceService (spec.predictor.nodeSelector, tolerations); remove it"
        }
        "replicas" => {
            "replicas belong on the InferenceService (minReplicas/maxReplicas); remove it"
        }
        "workerSpec" => "multi-node runtimes (workerSpec) are not supported; remove it",
        "hostIPC" => "host IPC is not granted to runtime pods; remove it",
        _ => "not supported by Ferry; remove it",
    }
}

/// Converts a KServe runtime document to Ferry's (as JSON), or every problem by field.
pub fn convert(doc: &Value, kind: &str) -> Result<Value, Vec<FieldError>> {
    let mut errors = Vec::new();
    let empty = Map::new();
    let top = doc.as_object().unwrap_or(&empty);
    for key in top.keys() {
        if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
            errors.push(FieldError::new(key, refusal(key)));
        }
    }
    let Some(spec) = top.get("spec").and_then(Value::as_object) else {
        return Err(vec![FieldError::new("spec", "Required value")]);
    };
    let mut out = Map::new();
    for (key, value) in spec {
        let path = format!("spec.{key}");
        if !KEPT.contains(&key.as_str()) {
            errors.push(FieldError::new(&path, refusal(key)));
            continue;
        }
        match key.as_str() {
            "multiModel" if value == &Value::Bool(true) => errors.push(FieldError::new(
                &path,
                "Unsupported value: true: multi-model (ModelMesh) runtimes are not supported; Ferry runs one model per runtime pod",
            )),
            "multiModel" => {}
            "supportedModelFormats" => {
                out.insert(key.clone(), formats(value, &path, &mut errors));
            }
            "containers" => {
                placeholders(value, &path, &mut errors);
                out.insert(key.clone(), value.clone());
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    let grpc = spec
        .get("protocolVersions")
        .and_then(Value::as_array)
        .is_some_and(|p| p.iter().any(|v| v == "grpc-v2"));
    out.insert("httpPort".into(), json!(KSERVE_HTTP_PORT));
    if grpc {
        out.insert("grpcPort".into(), json!(KSERVE_GRPC_PORT));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut converted = json!({
        "apiVersion": crate::API_VERSION,
        "kind": kind,
        "spec": Value::Object(out),
    });
    if let Some(metadata) = top.get("metadata") {
        converted["metadata"] = metadata.clone();
    }
    Ok(converted)
}

fn formats(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Value {
    let Some(list) = value.as_array() else {
        errors.push(FieldError::new(path, "Invalid value: must be a list"));
        return Value::Null;
    };
    let mut out = Vec::new();
    for (i, format) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let Some(format) = format.as_object() else {
            errors.push(FieldError::new(
                &at,
                "Invalid value: must be of type object",
            ));
            continue;
        };
        let mut converted = Map::new();
        for (key, value) in format {
            match key.as_str() {
                "name" | "priority" => {
                    converted.insert(key.clone(), value.clone());
                }
                "autoSelect" => {
                    converted.insert("autoSelect".into(), value.clone());
                }
                // KServe writes versions as strings; YAML may have made a number of "1".
                "version" => {
                    let text = match value {
                        Value::Number(n) => Value::String(n.to_string()),
                        other => other.clone(),
                    };
                    converted.insert(key.clone(), text);
                }
                other => errors.push(FieldError::new(
                    &format!("{at}.{other}"),
                    "not supported by Ferry; remove it",
                )),
            }
        }
        // KServe chooses a runtime automatically only where it says autoSelect: true.
        converted.entry("autoSelect").or_insert(Value::Bool(false));
        out.push(Value::Object(converted));
    }
    Value::Array(out)
}

/// The placeholders the renderer fills (`crate::kserve_runtime::fill`); others are refused.
fn placeholders(containers: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let check = |text: &str, at: &str, errors: &mut Vec<FieldError>| {
        for placeholder in find_placeholders(text) {
            if placeholder_value(
                placeholder,
                "",
                "",
                &Default::default(),
                &Default::default(),
            )
            .is_none()
            {
                errors.push(FieldError::new(
                    at,
                    format!(
                        "Unsupported value: {{{{{placeholder}}}}}: Ferry fills {{{{.Name}}}}, {{{{.Namespace}}}}, {{{{.Labels.KEY}}}} and {{{{.Annotations.KEY}}}} from the InferenceService"
                    ),
                ));
            }
        }
    };
    for (i, container) in containers.as_array().into_iter().flatten().enumerate() {
        let at = format!("{path}[{i}]");
        for field in ["args", "command"] {
            for (j, arg) in container
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(text) = arg.as_str() {
                    check(text, &format!("{at}.{field}[{j}]"), errors);
                }
            }
        }
        for (j, var) in container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(text) = var.get("value").and_then(Value::as_str) {
                check(text, &format!("{at}.env[{j}].value"), errors);
            }
        }
    }
}

/// The `X` of every `{{X}}` in `text` (trimmed).
fn find_placeholders(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        found.push(rest[start + 2..start + end].trim());
        rest = &rest[start + end + 2..];
    }
    found
}

fn placeholder_value(
    placeholder: &str,
    name: &str,
    namespace: &str,
    labels: &std::collections::BTreeMap<String, String>,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    match placeholder {
        ".Name" => Some(name.to_string()),
        ".Namespace" => Some(namespace.to_string()),
        other => {
            if let Some(key) = other.strip_prefix(".Labels.") {
                Some(labels.get(key).cloned().unwrap_or_default())
            } else {
                other
                    .strip_prefix(".Annotations.")
                    .map(|key| annotations.get(key).cloned().unwrap_or_default())
            }
        }
    }
}

/// `text` with KServe's placeholders filled from the InferenceService's metadata (a missing
/// label or annotation is the empty string).
pub fn fill(text: &str, isvc: &crate::InferenceService) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    let meta = &isvc.metadata;
    let (labels, annotations) = (
        meta.labels.clone().unwrap_or_default(),
        meta.annotations.clone().unwrap_or_default(),
    );
    let name = meta.name.clone().unwrap_or_default();
    let namespace = isvc.namespace_or_default();
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let placeholder = rest[start + 2..start + end].trim();
        match placeholder_value(placeholder, &name, &namespace, &labels, &annotations) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}
