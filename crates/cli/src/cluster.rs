//! Client commands against a cluster (`--kubeconfig`): the same rollout controls as local
//! mode, written as the annotations the operator reads (`kubectl annotate` would do the same).

use std::path::Path;

use anyhow::{Context, Result};
use ferry_api::InferenceService;
use ferry_core::progressive::Control;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// A client for the cluster `kubeconfig` names (its current context).
pub async fn client(kubeconfig: &Path) -> Result<Client> {
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
    ferry_operator::console::control_rollout(&client(kubeconfig).await?, namespace, name, control)
        .await
        .with_context(|| format!("InferenceService {namespace}/{name}"))
}

/// `ferry apikey create --kubeconfig`: the key's Secret in its namespace (the router watches it).
pub async fn create_api_key(kubeconfig: &Path, record: &ferry_api::ApiKeyRecord) -> Result<()> {
    let secrets: Api<ferry_api::k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client(kubeconfig).await?, &record.namespace);
    secrets
        .create(&kube::api::PostParams::default(), &record.to_secret())
        .await
        .with_context(|| {
            format!(
                "cannot create the API key Secret in namespace {}",
                record.namespace
            )
        })?;
    Ok(())
}

/// `ferry apikey list --kubeconfig`: the namespace's API key Secrets.
pub async fn api_keys(kubeconfig: &Path, namespace: &str) -> Result<Vec<ferry_api::ApiKeyRecord>> {
    let secrets: Api<ferry_api::k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client(kubeconfig).await?, namespace);
    let list = secrets
        .list(&kube::api::ListParams::default().labels(ferry_api::LABEL_API_KEY))
        .await
        .with_context(|| format!("cannot list the API key Secrets of namespace {namespace}"))?;
    let mut records: Vec<_> = list
        .items
        .iter()
        .filter_map(ferry_api::ApiKeyRecord::from_secret)
        .collect();
    records.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
    Ok(records)
}

/// `ferry apikey revoke --kubeconfig`: delete the key's Secret (only an API key Secret).
pub async fn revoke_api_key(kubeconfig: &Path, namespace: &str, id: &str) -> Result<()> {
    let secrets: Api<ferry_api::k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client(kubeconfig).await?, namespace);
    let name = ferry_api::ApiKeyRecord::secret_name(id);
    match secrets.get_opt(&name).await? {
        Some(secret) if ferry_api::ApiKeyRecord::from_secret(&secret).is_some() => {}
        _ => anyhow::bail!("API key {namespace}/{id} not found"),
    }
    secrets
        .delete(&name, &kube::api::DeleteParams::default())
        .await
        .with_context(|| format!("cannot delete Secret {namespace}/{name}"))?;
    Ok(())
}
