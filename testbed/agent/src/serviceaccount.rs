//! ServiceAccount credentials for a pod, as a kubelet projects them: a token from the
//! TokenRequest API (bound to the pod, refreshed at 80 % of its lifetime), the cluster CA and the
//! namespace, in a directory that the container sees at
//! `/var/run/secrets/kubernetes.io/serviceaccount` through a private mount namespace.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;

/// Where containers find the credentials.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const TOKEN_SECONDS: i64 = 3600;

/// Whether the pod gets ServiceAccount credentials.
pub fn wanted(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|s| s.automount_service_account_token != Some(false))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

async fn request_token(client: &kube::Client, pod: &Pod) -> Result<(String, i64)> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let answer = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for serviceaccount {namespace}/{account}"))?;
    let status = answer.status.context("TokenRequest without status")?;
    Ok((status.token, TOKEN_SECONDS))
}

/// Write the credentials into `dir` and keep the token fresh until the returned task is aborted.
pub async fn project(
    client: kube::Client,
    pod: Pod,
    ca_file: PathBuf,
    dir: PathBuf,
) -> Result<tokio::task::JoinHandle<()>> {
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(&ca_file, dir.join("ca.crt")).context("copy the cluster CA")?;
    write_atomic(
        &dir.join("namespace"),
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let (token, lifetime) = request_token(&client, &pod).await?;
    write_atomic(&dir.join("token"), token.as_bytes())?;
    Ok(tokio::spawn(async move {
        let mut lifetime = lifetime;
        loop {
            tokio::time::sleep(Duration::from_secs((lifetime as u64) * 8 / 10)).await;
            match request_token(&client, &pod).await {
                Ok((token, seconds)) => {
                    lifetime = seconds;
                    let _ = write_atomic(&dir.join("token"), token.as_bytes());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "token refresh failed; retrying in 10 s");
                    lifetime = 12;
                }
            }
        }
    }))
}

/// Wrap `program args` so it runs in a private mount namespace with each `(source, target)`
/// directory bound at its target (the ServiceAccount credentials at [`MOUNT_PATH`], the pod's
/// emptyDir and hostPath volumes at their mount paths); `unshare` execs in place, so the pid
/// stays the container's.
pub fn wrap(
    program: &Path,
    args: &[String],
    binds: &[(PathBuf, String)],
) -> (PathBuf, Vec<String>) {
    fn quote(text: &str) -> String {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
    let mut script = String::new();
    for (source, target) in binds {
        let target = quote(target);
        script.push_str(&format!(
            "mkdir -p {target} && mount --bind {} {target} && ",
            quote(&source.display().to_string())
        ));
    }
    script.push_str("exec \"$@\"");
    let mut wrapped = vec![
        "--mount".to_string(),
        "--propagation".to_string(),
        "private".to_string(),
        "--".to_string(),
        "/bin/sh".to_string(),
        "-c".to_string(),
        script,
        "container".to_string(),
        program.display().to_string(),
    ];
    wrapped.extend(args.iter().cloned());
    (PathBuf::from("unshare"), wrapped)
}
