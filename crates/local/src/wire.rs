//! The control API's messages, typed once for its handlers (`api.rs`) and its client
//! (`client.rs`, which the CLI uses): JSON on the wire, camelCase names.

use ferry_api::DocumentErrors;
use ferry_core::ReplicaHealth;
use serde::{Deserialize, Serialize};

pub use crate::store::{Applied, ChangeRow, EventRow, RevisionRow};

/// `POST /v1/apply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub manifests: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Work out what the apply would change (outcomes and diffs) and keep nothing.
    #[serde(default, rename = "dryRun")]
    pub dry_run: bool,
    /// Why, for the audit trail (the client's command line); default `apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// What `apply` did to one InferenceService.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub namespace: String,
    pub name: String,
    pub result: Applied,
    pub revision: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub results: Vec<ApplyResult>,
    /// What the apply did to each ResourceQuota.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaApplied>,
    /// What the apply did to each Namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceApplied>,
    /// What the apply did to each ServerPool (namespace, name in `QuotaApplied`'s shape).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<QuotaApplied>,
    /// Every document it changed (or, dry, would change), with the diff.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<ChangeRow>,
}

/// What `apply` did to one Namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceApplied {
    pub name: String,
    pub result: Applied,
}

/// What `apply` did to one ResourceQuota.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaApplied {
    pub namespace: String,
    pub name: String,
    pub result: Applied,
}

/// One quota as `ferry get quota` shows it: (resource, used, hard) each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaInfo {
    pub namespace: String,
    pub name: String,
    pub resources: Vec<(String, String, String)>,
}

/// A list answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// One revision of a service's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevisionInfo {
    #[serde(flatten)]
    pub revision: RevisionRow,
    /// The revision the spec runs now.
    pub current: bool,
}

/// One replica as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaInfo {
    pub id: String,
    pub revision: String,
    pub pid: Option<i32>,
    /// REST and gRPC on TCP, while it runs.
    pub http: Option<String>,
    pub grpc: Option<String>,
    pub http_unix: Option<String>,
    pub grpc_unix: Option<String>,
    /// `None` before the supervisor has seen it.
    pub health: Option<ReplicaHealth>,
    pub ready: bool,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub terminating: bool,
    /// The tail of its log, when it is not ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_log_lines: Vec<String>,
}

/// `DELETE` of an InferenceService.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: String,
}

/// `POST .../rollback`: to `revision`, or the newest other one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub revision: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolledBack {
    pub revision: String,
}

/// Every refusal: what went wrong, and for refused manifests each document's problems.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub documents: Vec<DocumentErrors>,
}

/// One API key as `ferry apikey list` shows it (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub id: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<ferry_api::RateLimitSpec>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub created: String,
}

/// `POST /v1/namespaces/{ns}/apikeys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateApiKey {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<ferry_api::RateLimitSpec>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// The answer to a create: the key, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    pub key: String,
}
