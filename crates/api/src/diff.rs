//! What changed between two versions of an object, as a person reviews it: the object reduced
//! to what its author wrote (apiVersion, kind, name, namespace, labels, annotations, spec — no
//! status, no server bookkeeping), as YAML, and a unified diff of the two (`ferry diff`, the
//! audit trail of `ferry history`, both modes).

use serde::Serialize;
use serde_json::Value;

/// Metadata fields the server keeps for itself; a diff never shows them.
const SERVER_METADATA: &[&str] = &[
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "managedFields",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// Annotations a client writes for itself (the last applied manifest of client-side apply,
/// the change cause of `ferry apply --kubeconfig`); a diff never shows them.
const BOOKKEEPING_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    crate::ANNOTATION_CHANGE_CAUSE,
];

/// `object` as its author wrote it: its status and the server's metadata removed, empty
/// labels and annotations dropped. YAML with sorted keys, so two versions diff line by line.
pub fn authored_yaml(object: &impl Serialize) -> String {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("status");
        if let Some(Value::Object(metadata)) = map.get_mut("metadata") {
            for key in SERVER_METADATA {
                metadata.remove(*key);
            }
            if let Some(Value::Object(annotations)) = metadata.get_mut("annotations") {
                for key in BOOKKEEPING_ANNOTATIONS {
                    annotations.remove(*key);
                }
            }
            for key in ["labels", "annotations"] {
                if metadata
                    .get(key)
                    .is_some_and(|v| v.is_null() || v.as_object().is_some_and(|m| m.is_empty()))
                {
                    metadata.remove(key);
                }
            }
        }
    }
    // serde_json's maps are sorted (no preserve_order), so the YAML is too.
    serde_norway::to_string(&value).unwrap_or_default()
}

/// A unified diff (3 lines of context) from `old` to `new` under the two labels; `None` when
/// they are the same. An absent side (a new or a deleted object) is the empty text.
pub fn unified(old: &str, new: &str, old_label: &str, new_label: &str) -> Option<String> {
    if old == new {
        return None;
    }
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = diff
        .unified_diff()
        .context_radius(3)
        .header(old_label, new_label)
        .to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_and_server_metadata_are_not_part_of_the_authored_object() {
        let object = json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "iris", "namespace": "default", "generation": 4, "uid": "u",
                         "resourceVersion": "9", "managedFields": [{}], "labels": {},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"predictor": {"minReplicas": 2}},
            "status": {"url": "http://iris"},
        });
        let yaml = authored_yaml(&object);
        assert_eq!(
            yaml,
            "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata:\n  name: iris\n  namespace: default\nspec:\n  predictor:\n    minReplicas: 2\n"
        );
    }

    #[test]
    fn a_changed_field_is_one_removed_and_one_added_line() {
        let old =
            authored_yaml(&json!({"spec": {"predictor": {"minReplicas": 1, "maxReplicas": 3}}}));
        let new =
            authored_yaml(&json!({"spec": {"predictor": {"minReplicas": 2, "maxReplicas": 3}}}));
        let diff = unified(&old, &new, "live", "file").unwrap();
        assert!(diff.starts_with("--- live\n+++ file\n@@ "), "{diff}");
        assert!(
            diff.contains("\n-    minReplicas: 1\n+    minReplicas: 2\n"),
            "{diff}"
        );
        assert!(diff.contains("\n     maxReplicas: 3\n"), "{diff}");
        assert_eq!(unified(&old, &old, "a", "b"), None);
    }

    #[test]
    fn a_new_object_is_all_added_lines() {
        let diff = unified("", "a: 1\nb: 2\n", "/dev/null", "file").unwrap();
        assert!(diff.contains("+a: 1\n+b: 2\n"), "{diff}");
    }
}
