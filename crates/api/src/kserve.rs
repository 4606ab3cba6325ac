//! `serving.kserve.io/v1beta1` InferenceService manifests, converted to `ferry.dev/v1alpha1`.
//!
//! The predictor's model (`modelFormat`, `storageUri`, `protocolVersion`, `runtime` — the name of
//! a ferry.dev ServingRuntime in cluster mode —, `runtimeVersion`, `resources`, also the
//! older `predictor.onnx` form), `minReplicas` / `maxReplicas`, `scaleMetric` / `scaleTarget`,
//! `nodeSelector`, `tolerations`, `canaryTrafficPercent` (KServe's manual canary, with its
//! semantics) and metadata convert; every other
//! field is refused by name, never silently dropped.

use serde_json::{Map, Value, json};

use crate::schema_check::join;
use crate::validate::FieldError;

/// `apiVersion` of KServe's InferenceService.
pub const KSERVE_API_VERSION: &str = "serving.kserve.io/v1beta1";

/// Predictor fields that mean the same in both APIs and are copied as they are.
const SAME_PREDICTOR_FIELDS: &[&str] = &[
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "nodeSelector",
    "tolerations",
    "canaryTrafficPercent",
];

/// Convert a KServe manifest to a Ferry manifest (as JSON), or every unsupported field.
pub fn convert(doc: &Value) -> Result<Value, Vec<FieldError>> {
    let mut errors = Vec::new();
    let empty = Map::new();
    let top = doc.as_object().unwrap_or(&empty);
    refuse_unknown(
        top,
        "",
        &["apiVersion", "kind", "metadata", "spec", "status"],
        &mut errors,
    );
    let metadata = top.get("metadata").cloned().unwrap_or(Value::Null);

    let spec = object(top.get("spec"), "spec", &mut errors);
    refuse_unknown(spec, "spec", &["predictor"], &mut errors);
    let predictor = object(spec.get("predictor"), "spec.predictor", &mut errors);
    refuse_unknown(
        predictor,
        "spec.predictor",
        &[&["model", "onnx"], SAME_PREDICTOR_FIELDS].concat(),
        &mut errors,
    );
    let (model_path, model) = match (predictor.get("model"), predictor.get("onnx")) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                "spec.predictor.onnx",
                "Forbidden: give either spec.predictor.model or spec.predictor.onnx, not both",
            ));
            (
                "spec.predictor.model",
                object(predictor.get("model"), "spec.predictor.model", &mut errors),
            )
        }
        (None, Some(onnx)) => (
            "spec.predictor.onnx",
            object(Some(onnx), "spec.predictor.onnx", &mut errors),
        ),
        _ => (
            "spec.predictor.model",
            object(predictor.get("model"), "spec.predictor.model", &mut errors),
        ),
    };
    refuse_unknown(
        model,
        model_path,
        &[
            "modelFormat",
            "storageUri",
            "protocolVersion",
            "resources",
            "name",
            "runtime",
            "runtimeVersion",
        ],
        &mut errors,
    );

    let format = if model_path == "spec.predictor.onnx" {
        Some("onnx".to_string())
    } else {
        let format_path = join(model_path, "modelFormat");
        let model_format = object(model.get("modelFormat"), &format_path, &mut errors);
        refuse_unknown(
            model_format,
            &format_path,
            &["name", "version"],
            &mut errors,
        );
        match model_format.get("name").and_then(Value::as_str) {
            Some(name) => Some(name.to_string()),
            None => {
                errors.push(FieldError::new(
                    &join(&format_path, "name"),
                    "Required value",
                ));
                None
            }
        }
    };
    if let Some(protocol) = model.get("protocolVersion")
        && !matches!(protocol.as_str(), Some("v1" | "v2" | "grpc-v2"))
    {
        errors.push(FieldError::new(
            &join(model_path, "protocolVersion"),
            format!("Unsupported value: {protocol}: supported values: \"v1\", \"v2\", \"grpc-v2\" (Ferry's router serves them all on one port)"),
        ));
    }
    let uri = match model.get("storageUri").and_then(Value::as_str) {
        Some(uri) => Some(uri.to_string()),
        None => {
            errors.push(FieldError::new(
                &join(model_path, "storageUri"),
                "Required value",
            ));
            None
        }
    };
    let resources = model
        .get("resources")
        .map(|r| convert_resources(r, &join(model_path, "resources"), &mut errors));

    if let Some(metric) = predictor.get("scaleMetric")
        && !matches!(
            metric.as_str(),
            Some("cpu" | "memory" | "concurrency" | "rps")
        )
    {
        errors.push(FieldError::new(
            "spec.predictor.scaleMetric",
            format!("Unsupported value: {metric}: supported values: \"cpu\", \"memory\", \"concurrency\", \"rps\""),
        ));
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let mut ferry_predictor = json!({
        "model": { "format": format, "uri": uri },
    });
    match model.get("modelFormat").and_then(|f| f.get("version")) {
        Some(Value::Number(n)) => ferry_predictor["model"]["formatVersion"] = n.to_string().into(),
        Some(version) => ferry_predictor["model"]["formatVersion"] = version.clone(),
        None => {}
    }
    if let Some(version) = model.get("runtimeVersion") {
        ferry_predictor["model"]["runtimeVersion"] = version.clone();
    }
    // KServe names a serving.kserve.io ServingRuntime; Ferry looks for a ferry.dev one of the
    // same name in the namespace.
    if let Some(runtime) = model.get("runtime") {
        ferry_predictor["runtime"] = runtime.clone();
    }
    for field in SAME_PREDICTOR_FIELDS {
        if let Some(value) = predictor.get(*field) {
            ferry_predictor[*field] = value.clone();
        }
    }
    if let Some(resources) = resources {
        ferry_predictor["resources"] = resources;
    }
    let mut converted = json!({
        "apiVersion": crate::API_VERSION,
        "kind": "InferenceService",
        "spec": { "predictor": ferry_predictor },
    });
    if !metadata.is_null() {
        converted["metadata"] = metadata;
    }
    Ok(converted)
}

/// Where a field of the converted manifest came from, so errors name the user's own field.
pub fn source_path(ferry_path: &str, used_onnx_form: bool) -> String {
    let model = if used_onnx_form {
        "spec.predictor.onnx"
    } else {
        "spec.predictor.model"
    };
    if let Some(rest) = ferry_path.strip_prefix("spec.predictor.model.") {
        return match rest {
            "uri" => format!("{model}.storageUri"),
            "format" => format!("{model}.modelFormat.name"),
            "formatVersion" => format!("{model}.modelFormat.version"),
            other => format!("{model}.{other}"),
        };
    }
    if ferry_path == "spec.predictor.runtime" {
        return format!("{model}.runtime");
    }
    if let Some(rest) = ferry_path.strip_prefix("spec.predictor.resources") {
        return format!("{model}.resources{rest}");
    }
    ferry_path.to_string()
}

fn convert_resources(value: &Value, path: &str, errors: &mut Vec<FieldError>) -> Value {
    let resources = object(Some(value), path, errors);
    refuse_unknown(resources, path, &["requests", "limits"], errors);
    let mut out = Map::new();
    for section in ["requests", "limits"] {
        let Some(list) = resources.get(section) else {
            continue;
        };
        let section_path = join(path, section);
        let list = object(Some(list), &section_path, errors);
        let mut converted = Map::new();
        for (name, quantity) in list {
            // KServe manifests often write `cpu: 1`: quantities may be numbers there.
            let text = match quantity {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    errors.push(FieldError::new(
                        &join(&section_path, name),
                        format!("Invalid value: {other}: must be a quantity"),
                    ));
                    continue;
                }
            };
            converted.insert(name.clone(), Value::String(text));
        }
        out.insert(section.to_string(), Value::Object(converted));
    }
    Value::Object(out)
}

fn object<'a>(
    value: Option<&'a Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) -> &'a Map<String, Value> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    match value {
        Some(Value::Object(map)) => map,
        Some(other) => {
            errors.push(FieldError::new(
                path,
                format!("Invalid value: {other}: must be of type object"),
            ));
            &EMPTY
        }
        None => {
            errors.push(FieldError::new(path, "Required value"));
            &EMPTY
        }
    }
}

fn refuse_unknown(
    map: &Map<String, Value>,
    path: &str,
    known: &[&str],
    errors: &mut Vec<FieldError>,
) {
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            errors.push(FieldError::new(
                &join(path, key),
                format!("not supported by Ferry (field of {KSERVE_API_VERSION}); remove it"),
            ));
        }
    }
}
