//! Which server runs an InferenceService's model: Ferry's own, or a ServingRuntime of its
//! namespace — the one `spec.predictor.runtime` names, or, when it names none and the format is
//! not one Ferry's server runs, the first runtime (by name) that lists the format, as KServe
//! selects runtimes. A problem is a condition reason and message for the status.

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

/// Whether `runtime` lists `format` (a runtime that lists no format takes any: it is only ever
/// used by name).
pub fn serves(runtime: &ServingRuntime, format: &str) -> bool {
    let formats = &runtime.spec.supported_model_formats;
    formats.is_empty() || formats.iter().any(|f| f.name == format)
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
/// namespaces; only those of the InferenceService's count).
pub fn resolve<'a>(
    isvc: &InferenceService,
    runtimes: impl IntoIterator<Item = &'a ServingRuntime>,
) -> Result<Option<&'a ServingRuntime>, RuntimeProblem> {
    let namespace = isvc.namespace_or_default();
    let format = isvc.spec.predictor.model.format.as_str();
    let mut local: Vec<&ServingRuntime> = runtimes
        .into_iter()
        .filter(|r| r.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .collect();
    local.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    match isvc.spec.predictor.runtime.as_deref() {
        Some(BUILTIN_RUNTIME) => Ok(None),
        Some(name) => {
            let runtime = local
                .into_iter()
                .find(|r| r.metadata.name.as_deref() == Some(name))
                .ok_or_else(|| RuntimeProblem {
                    reason: Reason::RuntimeNotFound,
                    message: format!("ServingRuntime {name:?} not found in namespace {namespace}"),
                })?;
            if serves(runtime, format) {
                Ok(Some(runtime))
            } else {
                let listed: Vec<&str> = runtime
                    .spec
                    .supported_model_formats
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect();
                Err(RuntimeProblem {
                    reason: Reason::UnsupportedModelFormat,
                    message: format!(
                        "ServingRuntime {name:?} serves {}, not format {format:?}",
                        listed.join(", ")
                    ),
                })
            }
        }
        None if !isvc.spec.predictor.needs_serving_runtime() => Ok(None),
        None => local
            .into_iter()
            .find(|r| {
                r.spec
                    .supported_model_formats
                    .iter()
                    .any(|f| f.name == format)
            })
            .map(Some)
            .ok_or_else(|| RuntimeProblem {
                reason: Reason::NoRuntimeForFormat,
                message: format!(
                    "Ferry's own server runs {}, and no ServingRuntime in namespace {namespace} lists format {format:?}",
                    SUPPORTED_FORMATS.join(", ")
                ),
            }),
    }
}

/// The `ferry server` arguments that serve the model at `uri` as `model` with
/// `compute_threads`: one rule for local replicas and rendered pods (each adds its listeners).
/// Files are passed as paths; `http(s)://` URIs as they are (the server fetches them at start).
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
            Err("RuntimeNotFound: ServingRuntime \"vllm\" not found in namespace ml".into())
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
        assert!(!needs(isvc("ml", "onnx", None)));
        assert!(!needs(isvc("ml", "onnx", Some("ferry"))));
        assert!(needs(isvc("ml", "onnx", Some("triton"))));
        assert!(needs(isvc("ml", "pytorch", None)));
    }
}
