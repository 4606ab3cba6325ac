//! Client commands against a cluster (`--kubeconfig`): the same rollout controls as local
//! mode, written as the annotations the operator reads (`kubectl annotate` would do the same).

use std::path::Path;

use anyhow::{Context, Result};
use ferry_api::InferenceService;
use ferry_core::progressive::{Control, control_annotations};
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// A JSON merge patch of annotations: `None` removes one.
#[derive(Debug, serde::Serialize)]
struct AnnotationPatch {
    metadata: Annotations,
}

#[derive(Debug, serde::Serialize)]
struct Annotations {
    annotations: std::collections::BTreeMap<String, Option<String>>,
}

/// A client for the cluster `kubeconfig` names (its current context).
async fn client(kubeconfig: &Path) -> Result<Client> {
    let file = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read the kubeconfig {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("unusable kubeconfig {}", kubeconfig.display()))?;
    Ok(Client::try_from(config)?)
}

/// `namespace/name` as the cluster has it.
pub async fn get(kubeconfig: &Path, namespace: &str, name: &str) -> Result<InferenceService> {
    let isvcs: Api<InferenceService> = Api::namespaced(client(kubeconfig).await?, namespace);
    isvcs
        .get(name)
        .await
        .with_context(|| format!("InferenceService {namespace}/{name}"))
}

/// Promote, abort, pause or resume the rollout of `namespace/name` in the cluster.
pub async fn control_rollout(
    kubeconfig: &Path,
    namespace: &str,
    name: &str,
    control: Control,
) -> Result<InferenceService> {
    let isvcs: Api<InferenceService> = Api::namespaced(client(kubeconfig).await?, namespace);
    let isvc = isvcs
        .get(name)
        .await
        .with_context(|| format!("InferenceService {namespace}/{name}"))?;
    let changes = control_annotations(control, &isvc).map_err(anyhow::Error::msg)?;
    let patch = AnnotationPatch {
        metadata: Annotations {
            annotations: changes
                .into_iter()
                .map(|(key, value)| (key.to_string(), value))
                .collect(),
        },
    };
    isvcs
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("cannot annotate InferenceService {namespace}/{name}"))
}
