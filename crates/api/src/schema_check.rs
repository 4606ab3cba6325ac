//! Structural check of a manifest against the CRD's own OpenAPI schema: unknown fields, wrong
//! types and missing required fields, every one with its path. The schema is the one the
//! apiserver enforces in cluster mode, so both modes refuse the same documents.

use serde_json::Value;

use crate::validate::FieldError;

/// Check `value` (at `path`) against `schema`, appending every problem to `errors`.
pub(crate) fn check(value: &Value, schema: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            errors.push(FieldError::new(path, "Invalid value: null"));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_string() || value.is_u64() || value.is_i64()) {
            errors.push(FieldError::new(
                path,
                format!(
                    "Invalid value: {}: must be an integer or a string",
                    short(value)
                ),
            ));
        }
        return;
    }
    if let Some(branches) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        let fits = branches.iter().any(|branch| {
            let mut scratch = Vec::new();
            check(value, branch, path, &mut scratch);
            scratch.is_empty()
        });
        if !fits {
            errors.push(FieldError::new(
                path,
                format!("Invalid value: {}: {}", short(value), describe(schema)),
            ));
        }
        return;
    }
    let Some(kind) = schema.get("type").and_then(Value::as_str) else {
        return;
    };
    let type_ok = match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        errors.push(FieldError::new(
            path,
            format!("Invalid value: {}: must be of type {kind}", short(value)),
        ));
        return;
    }
    if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64)
        && value.as_f64().is_some_and(|v| v < minimum)
    {
        errors.push(FieldError::new(
            path,
            format!("Invalid value: {value}: must be at least {minimum}"),
        ));
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(FieldError::new(
            path,
            format!(
                "Unsupported value: {value}: supported values: {}",
                names.join(", ")
            ),
        ));
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, field) in fields {
                let child = join(path, key);
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(sub), _) => check(field, sub, &child, errors),
                    (None, Some(sub)) if sub.is_object() => check(field, sub, &child, errors),
                    (None, Some(Value::Bool(true))) => {}
                    _ => errors.push(FieldError::new(&child, "unknown field")),
                }
            }
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        errors.push(FieldError::new(&join(path, name), "Required value"));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    check(item, item_schema, &format!("{path}[{index}]"), errors);
                }
            }
        }
        _ => {}
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 60 {
        format!("{}...", &text[..text.floor_char_boundary(57)])
    } else {
        text
    }
}

fn describe(schema: &Value) -> String {
    let kinds: Vec<&str> = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .filter_map(|s| s.get("type").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    format!("must be one of the types {}", kinds.join(" | "))
}
