//! Which server runs an InferenceService's model: Ferry's own, or a ServingRuntime — KServe's
//! selection rules:
//! - `spec.predictor.runtime` names one: the namespace's ServingRuntime of that name, else the
//!   ClusterServingRuntime; it must list the model's format (and its version, when the model
//!   gives one) and not be disabled;
//! - it names none and Ferry's server does not run the format: among the runtimes that list the
//!   format (and version) for auto-selection and are not disabled, the namespace's before the
//!   cluster's, then the highest `priority`, then by name.
//!
//! Cluster runtimes come in as ServingRuntimes with no namespace
//! (`ClusterServingRuntime::as_runtime`). A problem is a condition reason and message.

use ferry_api::validate::{BUILTIN_RUNTIME, SUPPORTED_FORMATS};
use ferry_api::{InferenceService, ServingRuntime};

use crate::reason::Reason;

/// Why no server can run an InferenceService's model (a condition reason and its message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeProblem {
    /// `RuntimeNotFound` (the named ServingRuntime does not exist in the namespace),
    /// `UnsupportedModelFormat` (it does not list the model's format) or `NoRuntimeForFormat`
    /// (none was named, Ferry's server does not run the format, and no ServingRuntime lists it).
    pub reason: Reason,
    pub message: String,
}

/// Whether `runtime` lists `format` at `version` (a runtime that lists no format takes any: it
/// is only ever used by name).
pub fn serves(runtime: &ServingRuntime, format: &str, version: Option<&str>) -> bool {
    let formats = &runtime.spec.supported_model_formats;
    formats.is_empty() || listing(runtime, format, version).is_some()
}

fn listing<'a>(
    runtime: &'a ServingRuntime,
    format: &str,
    version: Option<&str>,
) -> Option<&'a ferry_api::SupportedModelFormat> {
    runtime.spec.supported_model_formats.iter().find(|f| {
        f.name == format
            && match (version, f.version.as_deref()) {
                (Some(wanted), Some(listed)) => wanted == listed,
                _ => true,
            }
    })
}

/// The name of the revision `isvc` runs as on `runtime` (what [`resolve`] chose; `None`: Ferry's
/// own server): the one naming rule for the operator and `ferry render`.
pub fn revision(isvc: &InferenceService, runtime: Option<&ServingRuntime>) -> String {
    ferry_api::revision_name_with_runtime(
        isvc.metadata.name.as_deref().unwrap_or_default(),
        &isvc.spec.predictor,
        runtime.map(|r| &r.spec),
    )
}

/// The ServingRuntime that serves `isvc` (`None`: Ferry's own server), from `runtimes` (any
/// namespaces: only the InferenceService's and the cluster's — no namespace — count).
pub fn resolve<'a>(
    isvc: &InferenceService,
    runtimes: impl IntoIterator<Item = &'a ServingRuntime>,
) -> Result<Option<&'a ServingRuntime>, RuntimeProblem> {
    let namespace = isvc.namespace_or_default();
    let model = &isvc.spec.predictor.model;
    let (format, version) = (model.format.as_str(), model.format_version.as_deref());
    // (cluster-wide, runtime): the namespace's first.
    let mut visible: Vec<(bool, &ServingRuntime)> = runtimes
        .into_iter()
        .filter_map(|r| match r.metadata.namespace.as_deref() {
            None => Some((true, r)),
            Some(ns) if ns == namespace => Some((false, r)),
            Some(_) => None,
        })
        .collect();
    visible.sort_by(|a, b| (a.0, &a.1.metadata.name).cmp(&(b.0, &b.1.metadata.name)));
    let kind = |cluster: bool| {
        if cluster {
            "ClusterServingRuntime"
        } else {
            "ServingRuntime"
        }
    };
    let wanted = match version {
        Some(v) => format!("format {format:?} version {v:?}"),
        None => format!("format {format:?}"),
    };
    match isvc.spec.predictor.runtime.as_deref() {
        Some(BUILTIN_RUNTIME) => Ok(None),
        Some(name) => {
            let (cluster, runtime) = visible
                .into_iter()
                .find(|(_, r)| r.metadata.name.as_deref() == Some(name))
                .ok_or_else(|| RuntimeProblem {
                    reason: Reason::RuntimeNotFound,
                    message: format!(
                        "ServingRuntime {name:?} not found in namespace {namespace}, nor a ClusterServingRuntime {name:?}"
                    ),
                })?;
            if runtime.spec.disabled == Some(true) {
                return Err(RuntimeProblem {
                    reason: Reason::RuntimeNotFound,
                    message: format!("{} {name:?} is disabled", kind(cluster)),
                });
            }
            if serves(runtime, format, version) {
                Ok(Some(runtime))
            } else {
                let listed: Vec<String> = runtime
                    .spec
                    .supported_model_formats
                    .iter()
                    .map(|f| match &f.version {
                        Some(v) => format!("{} {v}", f.name),
                        None => f.name.clone(),
                    })
                    .collect();
                Err(RuntimeProblem {
                    reason: Reason::UnsupportedModelFormat,
                    message: format!(
                        "{} {name:?} serves {}, not {wanted}",
                        kind(cluster),
                        listed.join(", ")
                    ),
                })
            }
        }
        None if !isvc.spec.predictor.needs_serving_runtime() => Ok(None),
        None => {
            let mut candidates: Vec<(bool, i32, &ServingRuntime)> = visible
                .into_iter()
                .filter(|(_, r)| r.spec.disabled != Some(true))
                .filter_map(|(cluster, r)| {
                    let listed = listing(r, format, version)?;
                    (listed.auto_select != Some(false))
                        .then(|| (cluster, listed.priority.unwrap_or(0), r))
                })
                .collect();
            // Stable: the name order within a scope and priority stays.
            candidates.sort_by_key(|c| (c.0, std::cmp::Reverse(c.1)));
            candidates
                .first()
                .map(|(_, _, r)| Some(*r))
                .ok_or_else(|| RuntimeProblem {
                    reason: Reason::NoRuntimeForFormat,
                    message: format!(
                        "Ferry's own server runs {}, and no ServingRuntime in namespace {namespace} nor ClusterServingRuntime lists {wanted} for auto-selection",
                        SUPPORTED_FORMATS.join(", ")
                    ),
                })
        }
    }
}

/// The `ferry server` arguments that serve the model at `uri` as `model` with
/// `compute_threads`: one rule for local replicas and rendered pods (each adds its listeners).
/// Files are passed as paths; remote URIs (s3://, oci://, ...) as they are (the server fetches
/// them at start, through its model cache).
pub fn server_args(model: &str, uri: &str, compute_threads: Option<u32>) -> Vec<String> {
    let mut args = vec![
        "server".to_string(),
        "--model".to_string(),
        format!(
            "{model}={}",
            ferry_api::local_model_path(uri).unwrap_or(uri)
        ),
    ];
    if let Some(threads) = compute_threads {
        args.extend(["--compute-threads".to_string(), threads.to_string()]);
    }
    args
}

/// How Ferry's own server is started as a pool server: no model of its own (models are
/// registered through its repository API), resident models kept within `memory_budget` bytes.
pub fn pool_server_args(memory_budget: u64, compute_threads: Option<u32>) -> Vec<String> {
    let mut args = vec![
        "server".to_string(),
        "--memory-budget".to_string(),
        memory_budget.to_string(),
    ];
    if let Some(threads) = compute_threads {
        args.extend(["--compute-threads".to_string(), threads.to_string()]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isvc(namespace: &str, format: &str, runtime: Option<&str>) -> InferenceService {
        let runtime = runtime.map_or(String::new(), |r| format!("    runtime: {r}\n"));
        let text = format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: m, namespace: {namespace}}}\nspec:\n  predictor:\n    model: {{format: {format}, uri: /models/m}}\n{runtime}"
        );
        crate::testing::isvc(&text)
    }

    fn runtime(namespace: &str, name: &str, formats: &[&str]) -> ServingRuntime {
        let formats: Vec<String> = formats.iter().map(|f| format!("{{name: {f}}}")).collect();
        let text = format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: ServingRuntime\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  supportedModelFormats: [{}]\n  containers: [{{name: server, image: example/{name}:1}}]\n",
            formats.join(", ")
        );
        crate::testing::runtime(&text)
    }

    fn name(resolved: Result<Option<&ServingRuntime>, RuntimeProblem>) -> Result<String, String> {
        resolved
            .map(|r| r.map_or("ferry".to_string(), |r| r.metadata.name.clone().unwrap()))
            .map_err(|p| format!("{}: {}", p.reason, p.message))
    }

    #[test]
    fn a_named_runtime_is_found_in_the_services_namespace_only() {
        let runtimes = [
            runtime("ml", "triton", &["onnx", "tensorrt"]),
            runtime("other", "vllm", &["huggingface"]),
        ];
        assert_eq!(
            name(resolve(&isvc("ml", "onnx", Some("triton")), &runtimes)),
            Ok("triton".into())
        );
        let missing = name(resolve(&isvc("ml", "huggingface", Some("vllm")), &runtimes));
        assert_eq!(
            missing,
            Err("RuntimeNotFound: ServingRuntime \"vllm\" not found in namespace ml, nor a ClusterServingRuntime \"vllm\"".into())
        );
        let wrong = name(resolve(&isvc("ml", "pytorch", Some("triton")), &runtimes));
        assert_eq!(
            wrong,
            Err("UnsupportedModelFormat: ServingRuntime \"triton\" serves onnx, tensorrt, not format \"pytorch\"".into())
        );
        assert_eq!(
            name(resolve(&isvc("ml", "onnx", Some("ferry")), &runtimes)),
            Ok("ferry".into())
        );
    }

    #[test]
    fn without_a_name_onnx_stays_on_ferry_and_other_formats_pick_a_runtime() {
        let runtimes = [
            runtime("ml", "z-torch", &["pytorch"]),
            runtime("ml", "a-torch", &["pytorch", "onnx"]),
            runtime("ml", "any", &[]),
        ];
        assert_eq!(
            name(resolve(&isvc("ml", "onnx", None), &runtimes)),
            Ok("ferry".into()),
            "Ferry's own server first for what it runs"
        );
        assert_eq!(
            name(resolve(&isvc("ml", "pytorch", None), &runtimes)),
            Ok("a-torch".into()),
            "the first by name that lists the format; a runtime listing none is never chosen"
        );
        let none = name(resolve(&isvc("ml", "sklearn", None), &runtimes)).unwrap_err();
        assert!(none.starts_with("NoRuntimeForFormat: "), "{none}");
        assert!(none.contains("\"sklearn\""), "{none}");
        assert_eq!(
            name(resolve(&isvc("ml", "sklearn", Some("any")), &runtimes)),
            Ok("any".into()),
            "a runtime listing no format serves whatever names it"
        );
        let needs = |i: InferenceService| i.spec.predictor.needs_serving_runtime();
        assert!(needs(isvc("ml", "sklearn", None)));
        assert!(!needs(isvc("ml", "onnx", None)));
        assert!(!needs(isvc("ml", "onnx", Some("ferry"))));
        assert!(needs(isvc("ml", "onnx", Some("triton"))));
        assert!(needs(isvc("ml", "pytorch", None)));
    }

    fn kserve_runtime(namespace: Option<&str>, name: &str, formats: &str) -> ServingRuntime {
        let mut r = crate::testing::runtime(&format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: ServingRuntime\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  supportedModelFormats: {formats}\n  containers: [{{name: server, image: example/{name}:1}}]\n"
        ));
        r.metadata.namespace = namespace.map(str::to_string);
        r
    }

    #[test]
    fn kserve_rules_namespace_before_cluster_then_priority_version_and_auto_select() {
        let runtimes = [
            kserve_runtime(
                None,
                "kserve-mlserver",
                "[{name: sklearn, version: \"1\", autoSelect: true, priority: 2}]",
            ),
            kserve_runtime(
                None,
                "kserve-sklearnserver",
                "[{name: sklearn, version: \"1\", autoSelect: true, priority: 1}]",
            ),
            kserve_runtime(
                None,
                "kserve-old",
                "[{name: sklearn, version: \"0\", autoSelect: true, priority: 9}]",
            ),
            kserve_runtime(None, "manual-only", "[{name: xgboost, autoSelect: false}]"),
            kserve_runtime(
                Some("other"),
                "theirs",
                "[{name: sklearn, autoSelect: true, priority: 99}]",
            ),
        ];
        let with_version = |format: &str, version: Option<&str>, runtime: Option<&str>| {
            let mut i = isvc("ml", format, runtime);
            i.spec.predictor.model.format_version = version.map(str::to_string);
            i
        };
        // Cluster runtimes serve every namespace; the highest priority for the version wins.
        assert_eq!(
            name(resolve(
                &with_version("sklearn", Some("1"), None),
                &runtimes
            )),
            Ok("kserve-mlserver".into())
        );
        // No version asked: any listing counts, so the old one's priority 9 wins.
        assert_eq!(
            name(resolve(&with_version("sklearn", None, None), &runtimes)),
            Ok("kserve-old".into())
        );
        // A namespace's own runtime comes before any cluster one, whatever its priority.
        let mut mine = runtimes.to_vec();
        mine.push(kserve_runtime(
            Some("ml"),
            "mine",
            "[{name: sklearn, autoSelect: true}]",
        ));
        assert_eq!(
            name(resolve(&with_version("sklearn", Some("1"), None), &mine)),
            Ok("mine".into())
        );
        // autoSelect: false is only used by name; by name it is found in the cluster.
        let none = name(resolve(&with_version("xgboost", None, None), &runtimes)).unwrap_err();
        assert!(none.starts_with("NoRuntimeForFormat"), "{none}");
        assert_eq!(
            name(resolve(
                &with_version("xgboost", None, Some("manual-only")),
                &runtimes
            )),
            Ok("manual-only".into())
        );
        let version = name(resolve(
            &with_version("sklearn", Some("2"), Some("kserve-mlserver")),
            &runtimes,
        ))
        .unwrap_err();
        assert_eq!(
            version,
            "UnsupportedModelFormat: ClusterServingRuntime \"kserve-mlserver\" serves sklearn 1, not format \"sklearn\" version \"2\""
        );
        // A disabled runtime is never chosen.
        let mut disabled = runtimes.to_vec();
        disabled[0].spec.disabled = Some(true);
        assert_eq!(
            name(resolve(
                &with_version("sklearn", Some("1"), None),
                &disabled
            )),
            Ok("kserve-sklearnserver".into())
        );
        let named = name(resolve(
            &with_version("sklearn", Some("1"), Some("kserve-mlserver")),
            &disabled,
        ))
        .unwrap_err();
        assert!(named.contains("is disabled"), "{named}");
    }
}
