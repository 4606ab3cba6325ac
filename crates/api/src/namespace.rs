//! `v1 Namespace` documents: a workspace's own rate limit, shared by every request to the
//! namespace whatever the service or key, as annotations on the Namespace. In a cluster it is
//! the real Namespace (the router watches them); local mode takes the document in
//! `ferry apply`.
//!
//! ```yaml
//! apiVersion: v1
//! kind: Namespace
//! metadata:
//!   name: team-a
//!   annotations:
//!     ferry.dev/rate-limit: 100/s        # N/s, N/m or N/h
//!     ferry.dev/rate-limit-burst: "200"  # optional: one second's worth by default
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;

use crate::RateLimitSpec;
use crate::validate::FieldError;

/// The namespace's rate limit (`N/s`, `N/m` or `N/h`).
pub const ANNOTATION_RATE_LIMIT: &str = "ferry.dev/rate-limit";
/// Its burst (a whole number; default one second's worth).
pub const ANNOTATION_RATE_LIMIT_BURST: &str = "ferry.dev/rate-limit-burst";

/// The rate limit `annotations` give a namespace (`None` without one), or the problem with the
/// annotation by its path.
pub fn namespace_rate_limit(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<RateLimitSpec>, FieldError> {
    let path = |key: &str| format!("metadata.annotations[{key}]");
    let Some(annotations) = annotations else {
        return Ok(None);
    };
    let burst = annotations.get(ANNOTATION_RATE_LIMIT_BURST);
    let Some(rate) = annotations.get(ANNOTATION_RATE_LIMIT) else {
        return match burst {
            Some(_) => Err(FieldError::new(
                &path(ANNOTATION_RATE_LIMIT),
                format!("Required value: {ANNOTATION_RATE_LIMIT_BURST} needs a rate"),
            )),
            None => Ok(None),
        };
    };
    let mut limit = RateLimitSpec::parse(rate).map_err(|e| {
        FieldError::new(&path(ANNOTATION_RATE_LIMIT), format!("Invalid value: {e}"))
    })?;
    if let Some(burst) = burst {
        let parsed = burst.trim().parse::<u32>().map_err(|_| {
            FieldError::new(
                &path(ANNOTATION_RATE_LIMIT_BURST),
                format!("Invalid value: {burst:?}: a whole number of requests"),
            )
        })?;
        limit.burst = Some(parsed);
        let mut errors = Vec::new();
        limit.check("burst", &mut errors);
        if !errors.is_empty() {
            return Err(FieldError::new(
                &path(ANNOTATION_RATE_LIMIT_BURST),
                format!("Invalid value: {parsed}: must be between 1 and 10000000"),
            ));
        }
    }
    Ok(Some(limit))
}

/// The document as a typed Namespace, or every problem with its field path.
pub fn parse_namespace(value: &Value) -> Result<Namespace, Vec<FieldError>> {
    let namespace: Namespace = crate::manifest::typed(value.clone(), "").map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    match namespace.metadata.name.as_deref() {
        None | Some("") => errors.push(FieldError::new("metadata.name", "Required value")),
        Some(name) if !crate::validate::is_dns_label(name, 63) => errors.push(FieldError::new(
            "metadata.name",
            format!("Invalid value: {name:?}: must be a DNS label"),
        )),
        Some(_) => {}
    }
    if let Err(error) = namespace_rate_limit(namespace.metadata.annotations.as_ref()) {
        errors.push(error);
    }
    if errors.is_empty() {
        Ok(namespace)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_annotations_give_the_limit_and_its_burst() {
        let limit = namespace_rate_limit(Some(&annotations(&[
            (ANNOTATION_RATE_LIMIT, "600/m"),
            (ANNOTATION_RATE_LIMIT_BURST, "20"),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(limit.requests_per_second, 10.0);
        assert_eq!(limit.burst(), 20);
        assert_eq!(namespace_rate_limit(None).unwrap(), None);
        assert_eq!(
            namespace_rate_limit(Some(&annotations(&[("other", "x")]))).unwrap(),
            None
        );
    }

    #[test]
    fn bad_annotations_are_refused_by_path() {
        let error = namespace_rate_limit(Some(&annotations(&[(ANNOTATION_RATE_LIMIT, "5/d")])))
            .unwrap_err();
        assert_eq!(error.path, "metadata.annotations[ferry.dev/rate-limit]");
        let error = namespace_rate_limit(Some(&annotations(&[
            (ANNOTATION_RATE_LIMIT, "5/s"),
            (ANNOTATION_RATE_LIMIT_BURST, "lots"),
        ])))
        .unwrap_err();
        assert_eq!(
            error.path,
            "metadata.annotations[ferry.dev/rate-limit-burst]"
        );
        let error = namespace_rate_limit(Some(&annotations(&[(ANNOTATION_RATE_LIMIT_BURST, "5")])))
            .unwrap_err();
        assert!(error.message.starts_with("Required value"), "{error}");
        let value: Value = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Bad_Name"}});
        let errors = parse_namespace(&value).unwrap_err();
        assert_eq!(errors[0].path, "metadata.name");
    }
}
