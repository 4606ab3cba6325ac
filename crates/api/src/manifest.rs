//! Manifests in: multi-document YAML (or JSON), each document an InferenceService in Ferry's or
//! KServe's form (and, for cluster mode, ServingRuntimes). Out: validated `InferenceService`s, or
//! every problem of every document.

use std::sync::LazyLock;

use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::Value;

use crate::validate::{FieldError, builtin_runtime_errors, validate};
use crate::{
    ClusterServingRuntime, InferenceService, ServerPool, ServingRuntime, kserve, kserve_runtime,
    schema_check,
};

/// Which form a manifest was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Ferry,
    KServe,
}

/// One validated document.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub isvc: InferenceService,
    pub source: Source,
}

/// Problems of one document (1-based index in the stream).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DocumentErrors {
    pub document: usize,
    /// `Kind namespace/name` when known.
    pub object: String,
    pub errors: Vec<FieldError>,
}

/// Why a set of manifests was refused: every problem, per document. Nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ParseError(pub Vec<DocumentErrors>);

fn render(documents: &[DocumentErrors]) -> String {
    let mut out = Vec::new();
    for doc in documents {
        for error in &doc.errors {
            out.push(format!(
                "document {} ({}): {error}",
                doc.document, doc.object
            ));
        }
    }
    out.join("\n")
}

static SPEC_SCHEMA: LazyLock<Value> = LazyLock::new(|| spec_schema(InferenceService::crd()));
static POOL_SPEC_SCHEMA: LazyLock<Value> = LazyLock::new(|| spec_schema(ServerPool::crd()));

fn spec_schema(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let crd = serde_json::to_value(crd).expect("the CRD serializes");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
}

const METADATA_FIELDS: &[&str] = &["name", "namespace", "labels", "annotations"];
/// Read-only fields `get -o yaml` prints; accepted and ignored so its output applies again.
const METADATA_READ_ONLY: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
];

/// Parse and validate every document of `text` for Ferry's own server (local mode: no
/// ServingRuntimes); `default_namespace` fills unset namespaces.
pub fn parse_manifests(text: &str, default_namespace: &str) -> Result<Vec<Manifest>, ParseError> {
    let parsed = parse_all(text, default_namespace, false)?;
    Ok(parsed.services)
}

/// Parse and validate every document of `text` as local mode takes them: InferenceServices
/// for Ferry's own server, and ResourceQuotas.
pub fn parse_local_manifests(
    text: &str,
    default_namespace: &str,
) -> Result<ClusterManifests, ParseError> {
    parse_all(text, default_namespace, false)
}

/// What a cluster takes from manifests: InferenceServices, and the ServingRuntimes they may name.
#[derive(Debug, Clone, Default)]
pub struct ClusterManifests {
    pub services: Vec<Manifest>,
    pub runtimes: Vec<ServingRuntime>,
    pub cluster_runtimes: Vec<ClusterServingRuntime>,
    /// The ferry.dev documents KServe runtime documents converted to (what to apply instead).
    pub converted: Vec<Value>,
    /// `v1 ResourceQuota` documents (local mode enforces them; a cluster has its own).
    pub quotas: Vec<k8s_openapi::api::core::v1::ResourceQuota>,
    /// `v1 Namespace` documents (local mode keeps their rate limit; a cluster has its own).
    pub namespaces: Vec<k8s_openapi::api::core::v1::Namespace>,
    /// ServerPools (both modes).
    pub pools: Vec<ServerPool>,
}

impl ClusterManifests {
    /// Every runtime as the resolver takes them (cluster ones with no namespace).
    pub fn all_runtimes(&self) -> Vec<ServingRuntime> {
        self.runtimes
            .iter()
            .cloned()
            .chain(
                self.cluster_runtimes
                    .iter()
                    .map(ClusterServingRuntime::as_runtime),
            )
            .collect()
    }
}

/// Parse and validate every document of `text` as cluster mode takes them: ServingRuntime
/// documents too, and InferenceServices that name a ServingRuntime or a format only one serves.
pub fn parse_cluster_manifests(
    text: &str,
    default_namespace: &str,
) -> Result<ClusterManifests, ParseError> {
    parse_all(text, default_namespace, true)
}

fn parse_all(
    text: &str,
    default_namespace: &str,
    cluster: bool,
) -> Result<ClusterManifests, ParseError> {
    let mut manifests = Vec::new();
    let mut runtimes = Vec::new();
    let mut cluster_runtimes = Vec::new();
    let mut converted_docs = Vec::new();
    let mut quotas = Vec::new();
    let mut namespaces = Vec::new();
    let mut pools = Vec::new();
    let mut problems = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                problems.push(DocumentErrors {
                    document: number,
                    object: "unparsable".into(),
                    errors: vec![FieldError::new("<document>", format!("invalid YAML: {e}"))],
                });
                // A syntax error ends the stream: later documents cannot be located reliably.
                break;
            }
        };
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let api = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let runtime_kind = matches!(kind, "ServingRuntime" | "ClusterServingRuntime")
            && (api == crate::API_VERSION || api == kserve_runtime::KSERVE_RUNTIME_API_VERSION);
        let quota_kind = kind == "ResourceQuota" && api == "v1";
        let namespace_kind = kind == "Namespace" && api == "v1";
        let pool_kind = kind == "ServerPool" && api == crate::API_VERSION;
        let result = match (runtime_kind, cluster) {
            _ if pool_kind => parse_pool(&value, default_namespace).map(|p| pools.push(p)),
            _ if namespace_kind => {
                crate::namespace::parse_namespace(&value).map(|n| namespaces.push(n))
            }
            _ if quota_kind => {
                crate::quota::parse_quota(&value, default_namespace).map(|q| quotas.push(q))
            }
            (true, true) => {
                let kserve = api == kserve_runtime::KSERVE_RUNTIME_API_VERSION;
                let converted = if kserve {
                    kserve_runtime::convert(&value, kind)
                } else {
                    Ok(value.clone())
                };
                converted.and_then(|doc| {
                    let parsed =
                        parse_runtime(&doc, default_namespace, kind == "ClusterServingRuntime")?;
                    match parsed {
                        Ok(r) => runtimes.push(r),
                        Err(r) => cluster_runtimes.push(r),
                    }
                    if kserve {
                        converted_docs.push(doc);
                    }
                    Ok(())
                })
            }
            (true, false) => Err(vec![FieldError::new(
                "kind",
                format!(
                    "Unsupported value: {kind}: runtimes run in cluster mode (ferry operator); local mode runs Ferry's own server"
                ),
            )]),
            (false, _) => {
                parse_isvc(&value, default_namespace, !cluster).map(|m| manifests.push(m))
            }
        };
        if let Err(errors) = result {
            problems.push(DocumentErrors {
                document: number,
                object: describe(&value),
                errors,
            });
        }
    }
    if problems.is_empty() {
        Ok(ClusterManifests {
            services: manifests,
            runtimes,
            cluster_runtimes,
            converted: converted_docs,
            quotas,
            namespaces,
            pools,
        })
    } else {
        Err(ParseError(problems))
    }
}

/// A document as the typed resource `K`: the read-only metadata `get -o yaml` prints and the
/// status dropped, the namespace defaulted.
pub(crate) fn typed<K>(mut document: Value, default_namespace: &str) -> Result<K, FieldError>
where
    K: kube::Resource + serde::de::DeserializeOwned,
{
    if let Some(metadata) = document.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.retain(|key, _| METADATA_FIELDS.contains(&key.as_str()));
    }
    if let Some(object) = document.as_object_mut() {
        object.remove("status");
    }
    let mut object: K = serde_json::from_value(document)
        .map_err(|e| FieldError::new("<document>", e.to_string()))?;
    if object.meta().namespace.is_none() {
        object.meta_mut().namespace = Some(default_namespace.to_string());
    }
    Ok(object)
}

/// One ServingRuntime (or, `cluster`, ClusterServingRuntime) document: its fields typed, its
/// name and containers checked.
fn parse_runtime(
    value: &Value,
    default_namespace: &str,
    cluster: bool,
) -> Result<Result<ServingRuntime, ClusterServingRuntime>, Vec<FieldError>> {
    if cluster {
        let mut runtime: ClusterServingRuntime =
            typed(value.clone(), default_namespace).map_err(|e| vec![e])?;
        runtime.metadata.namespace = None;
        let errors = crate::validate::validate_runtime(&runtime.as_runtime());
        return if errors.is_empty() {
            Ok(Err(runtime))
        } else {
            Err(errors)
        };
    }
    let runtime: ServingRuntime = typed(value.clone(), default_namespace).map_err(|e| vec![e])?;
    let errors = crate::validate::validate_runtime(&runtime);
    if errors.is_empty() {
        Ok(Ok(runtime))
    } else {
        Err(errors)
    }
}

/// One ServerPool document: its structure against the CRD's schema, its fields checked.
fn parse_pool(value: &Value, default_namespace: &str) -> Result<ServerPool, Vec<FieldError>> {
    if !value.is_object() {
        return Err(vec![FieldError::new(
            "<document>",
            "must be a mapping (an object)",
        )]);
    }
    let mut errors = Vec::new();
    check_structure(value, &POOL_SPEC_SCHEMA, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    let pool: ServerPool = typed(value.clone(), default_namespace).map_err(|e| vec![e])?;
    let errors = crate::pool::validate_pool(&pool);
    if errors.is_empty() {
        Ok(pool)
    } else {
        Err(errors)
    }
}

/// Validate one InferenceService document (already parsed to JSON) as cluster mode takes it.
pub fn parse_document(value: &Value, default_namespace: &str) -> Result<Manifest, Vec<FieldError>> {
    parse_isvc(value, default_namespace, false)
}

/// One InferenceService document; `builtin_only`: refuse what needs a ServingRuntime.
fn parse_isvc(
    value: &Value,
    default_namespace: &str,
    builtin_only: bool,
) -> Result<Manifest, Vec<FieldError>> {
    let Some(object) = value.as_object() else {
        return Err(vec![FieldError::new(
            "<document>",
            "must be a mapping (an object)",
        )]);
    };
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let (ferry_doc, source) = match (api_version, kind) {
        (crate::API_VERSION, "InferenceService") => (value.clone(), Source::Ferry),
        (kserve::KSERVE_API_VERSION, "InferenceService") => {
            (kserve::convert(value)?, Source::KServe)
        }
        ("", _) => return Err(vec![FieldError::new("apiVersion", "Required value")]),
        (_, "") => return Err(vec![FieldError::new("kind", "Required value")]),
        _ => {
            return Err(vec![FieldError::new(
                "kind",
                format!(
                    "Unsupported value: {api_version}/{kind}: supported: {}/InferenceService, {}/InferenceService",
                    crate::API_VERSION,
                    kserve::KSERVE_API_VERSION
                ),
            )]);
        }
    };
    let mut errors = Vec::new();
    check_structure(&ferry_doc, &SPEC_SCHEMA, &mut errors);
    let used_onnx_form = value.pointer("/spec/predictor/onnx").is_some();
    let rename = |mut e: FieldError| {
        if source == Source::KServe {
            e.path = kserve::source_path(&e.path, used_onnx_form);
        }
        e
    };
    if !errors.is_empty() {
        return Err(errors.into_iter().map(rename).collect());
    }
    let isvc: InferenceService =
        typed(ferry_doc, default_namespace).map_err(|e| vec![rename(e)])?;
    let mut errors = validate(&isvc);
    if builtin_only {
        errors.extend(builtin_runtime_errors(&isvc));
    }
    if errors.is_empty() {
        Ok(Manifest { isvc, source })
    } else {
        Err(errors.into_iter().map(rename).collect())
    }
}

fn check_structure(doc: &Value, spec_schema: &Value, errors: &mut Vec<FieldError>) {
    let object = doc.as_object().expect("checked by the caller");
    for key in object.keys() {
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            errors.push(FieldError::new(key, "unknown field"));
        }
    }
    match object.get("metadata") {
        None => errors.push(FieldError::new("metadata", "Required value")),
        Some(Value::Object(metadata)) => {
            for (key, value) in metadata {
                let path = format!("metadata.{key}");
                if METADATA_READ_ONLY.contains(&key.as_str()) {
                    continue;
                }
                if !METADATA_FIELDS.contains(&key.as_str()) {
                    errors.push(FieldError::new(&path, "unknown field"));
                    continue;
                }
                match (key.as_str(), value) {
                    ("name" | "namespace", Value::String(_)) => {}
                    ("labels" | "annotations", Value::Object(map)) => {
                        for (k, v) in map {
                            if !v.is_string() {
                                errors.push(FieldError::new(
                                    &format!("{path}.{k}"),
                                    format!("Invalid value: {v}: must be a string"),
                                ));
                            }
                        }
                    }
                    (_, other) => errors.push(FieldError::new(
                        &path,
                        format!("Invalid value: {other}: wrong type"),
                    )),
                }
            }
        }
        Some(other) => errors.push(FieldError::new(
            "metadata",
            format!("Invalid value: {other}: must be of type object"),
        )),
    }
    match object.get("spec") {
        None => errors.push(FieldError::new("spec", "Required value")),
        Some(spec) => schema_check::check(spec, spec_schema, "spec", errors),
    }
}

fn describe(value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    match value.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}
