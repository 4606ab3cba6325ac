//! The GitOps loop's commands: `ferry diff` (what applying manifests would change, as a unified
//! diff; exit code 1 when something would, as `kubectl diff`) against local mode's dry-run
//! apply or a cluster's server-side dry-run, and `ferry history` (local mode's audit trail:
//! who changed an object, when, why and the diff).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ferry_local::wire::{ApplyRequest, ChangeRow};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{self, Scope};

use crate::ctl::Common;

#[derive(Args)]
pub struct DiffArgs {
    #[command(flatten)]
    common: Common,
    /// Manifest file or directory; `-` reads stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Diff against the cluster this kubeconfig names (server-side dry-run apply) instead of
    /// local mode.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    common: Common,
    /// `NAME` (an InferenceService) or `KIND/NAME` (serverpool, quota, namespace).
    name: String,
    /// The cluster this kubeconfig names: the InferenceService's SpecChanged Events.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

/// The command line, for the audit trail's cause (`ferry apply -f iris.yaml`).
pub fn command_line() -> String {
    let mut words: Vec<String> = std::env::args().collect();
    if let Some(first) = words.first_mut() {
        *first = "ferry".into();
    }
    words.join(" ")
}

/// `ferry diff`: prints the diffs; `true` when applying would change something.
pub async fn diff(args: DiffArgs) -> Result<bool> {
    let diffs = match &args.kubeconfig {
        Some(kubeconfig) => cluster_diffs(&args, kubeconfig).await?,
        None => {
            let text = crate::manifests::read_manifests(&args.files)?;
            let answer = args
                .common
                .client()?
                .apply_request(&ApplyRequest {
                    manifests: text,
                    namespace: args.common.namespace.clone(),
                    dry_run: true,
                    cause: Some(command_line()),
                })
                .await
                .map_err(crate::ctl::refused)?;
            answer.changes.into_iter().filter_map(|c| c.diff).collect()
        }
    };
    for diff in &diffs {
        print!("{diff}");
    }
    Ok(!diffs.is_empty())
}

/// Each document applied with `dryRun=All` (server-side apply, field manager `ferry`), its
/// answer diffed against the live object (none: a new object).
async fn cluster_diffs(args: &DiffArgs, kubeconfig: &std::path::Path) -> Result<Vec<String>> {
    let client = crate::cluster::client(kubeconfig).await?;
    let text = crate::manifests::read_manifest_files(&args.files)?;
    let mut diffs = Vec::new();
    for (index, document) in documents(&text)?.into_iter().enumerate() {
        let object: DynamicObject = serde_json::from_value(document)
            .with_context(|| format!("document {}: not a Kubernetes object", index + 1))?;
        let (api, name, path) = resolve(&client, &object, &args.common.namespace, index).await?;
        let live = api.get_opt(&name).await.with_context(|| path.clone())?;
        let merged = api
            .patch(
                &name,
                &PatchParams::apply("ferry").force().dry_run(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("{path}: refused"))?;
        let old = live
            .as_ref()
            .map(ferry_api::diff::authored_yaml)
            .unwrap_or_default();
        let new = ferry_api::diff::authored_yaml(&merged);
        if let Some(diff) =
            ferry_api::diff::unified(&old, &new, &format!("a/{path}"), &format!("b/{path}"))
        {
            diffs.push(diff);
        }
    }
    Ok(diffs)
}

/// Where `object` (document `index` of a stream) lives on the cluster: its API (found by
/// discovery), its name, and `KIND/NAMESPACE/NAME` (`KIND/NAME` when cluster-scoped).
async fn resolve(
    client: &kube::Client,
    object: &DynamicObject,
    default_namespace: &str,
    index: usize,
) -> Result<(Api<DynamicObject>, String, String)> {
    let types = object
        .types
        .clone()
        .with_context(|| format!("document {}: apiVersion and kind are required", index + 1))?;
    let (group, version) = match types.api_version.split_once('/') {
        Some((group, version)) => (group.to_string(), version.to_string()),
        None => (String::new(), types.api_version.clone()),
    };
    let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &types.kind);
    let (resource, capabilities) =
        discovery::pinned_kind(client, &gvk)
            .await
            .with_context(|| {
                format!(
                    "document {}: the cluster does not serve {}",
                    index + 1,
                    types.kind
                )
            })?;
    let name = object
        .metadata
        .name
        .clone()
        .with_context(|| format!("document {}: metadata.name is required", index + 1))?;
    let namespace = object
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| default_namespace.to_string());
    Ok(match capabilities.scope {
        Scope::Namespaced => (
            Api::namespaced_with(client.clone(), &namespace, &resource),
            name.clone(),
            format!("{}/{namespace}/{name}", types.kind),
        ),
        Scope::Cluster => (
            Api::all_with(client.clone(), &resource),
            name.clone(),
            format!("{}/{name}", types.kind),
        ),
    })
}

/// Who these credentials are to the apiserver (SelfSubjectReview), for the change cause.
async fn whoami(client: &kube::Client) -> String {
    use ferry_api::k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    match reviews
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await
    {
        Ok(review) => review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_else(|| "unknown".into()),
        Err(_) => "unknown".into(),
    }
}

/// `ferry apply --kubeconfig`: each document applied server-side (field manager `ferry`); an
/// InferenceService carries its change cause (`ferry.dev/change-cause`: who, and the
/// command), which the operator names in the generation's `SpecChanged` Event.
pub async fn cluster_apply(
    files: &[PathBuf],
    namespace: &str,
    kubeconfig: &std::path::Path,
) -> Result<()> {
    let client = crate::cluster::client(kubeconfig).await?;
    let who = whoami(&client).await;
    let cause = format!("{who}: {}", command_line());
    let text = crate::manifests::read_manifest_files(files)?;
    for (index, document) in documents(&text)?.into_iter().enumerate() {
        let mut object: DynamicObject = serde_json::from_value(document)
            .with_context(|| format!("document {}: not a Kubernetes object", index + 1))?;
        let (api, name, path) = resolve(&client, &object, namespace, index).await?;
        if path.starts_with("InferenceService/") {
            object
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(ferry_api::ANNOTATION_CHANGE_CAUSE.into(), cause.clone());
        }
        api.patch(
            &name,
            &PatchParams::apply("ferry").force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("{path}: refused"))?;
        println!("{} serverside-applied", path.to_lowercase());
    }
    Ok(())
}

/// `ferry history NAME --kubeconfig`: the `SpecChanged` Events of the InferenceService (the
/// cluster keeps them for its event TTL, an hour by default; the apiserver's audit log keeps
/// the rest).
async fn cluster_history(kubeconfig: &std::path::Path, namespace: &str, name: &str) -> Result<()> {
    use ferry_api::k8s_openapi::api::core::v1::Event;
    let client = crate::cluster::client(kubeconfig).await?;
    let events: Api<Event> = Api::namespaced(client, namespace);
    let selector = format!(
        "involvedObject.kind=InferenceService,involvedObject.name={name},reason=SpecChanged"
    );
    let mut items = events
        .list(&kube::api::ListParams::default().fields(&selector))
        .await
        .with_context(|| format!("the Events of InferenceService {namespace}/{name}"))?
        .items;
    if items.is_empty() {
        anyhow::bail!(
            "no SpecChanged Events of InferenceService {namespace}/{name} (they expire with the cluster's event TTL)"
        );
    }
    let when = ferry_operator::console::event_time;
    items.sort_by_key(when);
    for event in &items {
        println!(
            "{}  {}",
            when(event),
            event.message.clone().unwrap_or_default()
        );
    }
    Ok(())
}

/// The non-empty YAML documents of `text`.
fn documents(text: &str) -> Result<Vec<serde_json::Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(document)
            .with_context(|| format!("document {}: not YAML", index + 1))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// `ferry history [KIND/]NAME`: every recorded change, oldest first, each with its diff.
pub async fn history(args: HistoryArgs) -> Result<()> {
    if let Some(kubeconfig) = &args.kubeconfig {
        return cluster_history(kubeconfig, &args.common.namespace, &args.name).await;
    }
    let (kind, name) = match args.name.split_once('/') {
        Some((kind, name)) => (kind_of(kind)?, name),
        None => ("InferenceService", args.name.as_str()),
    };
    let changes = args
        .common
        .client()?
        .history(kind, &args.common.namespace, name)
        .await?;
    print!("{}", changes_text(&changes));
    Ok(())
}

fn kind_of(kind: &str) -> Result<&'static str> {
    if crate::quota::is_quota(kind) {
        return Ok("ResourceQuota");
    }
    if crate::serverpool::is_pool(kind) {
        return Ok("ServerPool");
    }
    match kind.to_ascii_lowercase().as_str() {
        "isvc" | "inferenceservice" | "inferenceservices" | "inferenceservice.ferry.dev" => {
            Ok("InferenceService")
        }
        "ns" | "namespace" | "namespaces" => Ok("Namespace"),
        other => anyhow::bail!(
            "unknown kind {other:?}: known kinds are inferenceservice (isvc), serverpool (pool), resourcequota (quota) and namespace (ns)"
        ),
    }
}

/// Changes as `git log -p` shows commits: a header line each, then its diff.
fn changes_text(changes: &[ChangeRow]) -> String {
    let mut out = String::new();
    for change in changes {
        out.push_str(&format!(
            "change {}  {}  by {}  {}  ({})\n",
            change.seq, change.at, change.who, change.action, change.cause
        ));
        if let Some(diff) = &change.diff {
            out.push_str(diff);
        }
        out.push('\n');
    }
    out
}
