//! `ferry doctor kube`: what this process may do on the Kubernetes API, tried for real with the
//! credentials a Ferry component would use (in-cluster ServiceAccount, else the kubeconfig).
//! Each `--check "VERB RESOURCE"` is one real call in the client's default namespace; the answer
//! is printed as `VERB RESOURCE: allowed` or `VERB RESOURCE: forbidden (...)`.

use anyhow::{Context, Result, bail};
use clap::Args;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};

#[derive(Args)]
pub struct DoctorArgs {
    /// `list pods`, `get secrets`, ... (verbs: list; resources: pods, secrets, configmaps,
    /// services, events, deployments, nodes, inferenceservices). Repeatable.
    #[arg(long = "check", required = true)]
    checks: Vec<String>,
}

fn resource(name: &str) -> Result<(ApiResource, bool)> {
    let (group, version, kind, plural, namespaced) = match name {
        "pods" => ("", "v1", "Pod", "pods", true),
        "secrets" => ("", "v1", "Secret", "secrets", true),
        "configmaps" => ("", "v1", "ConfigMap", "configmaps", true),
        "services" => ("", "v1", "Service", "services", true),
        "events" => ("", "v1", "Event", "events", true),
        "nodes" => ("", "v1", "Node", "nodes", false),
        "deployments" => ("apps", "v1", "Deployment", "deployments", true),
        "inferenceservices" => (
            "ferry.dev",
            "v1alpha1",
            "InferenceService",
            "inferenceservices",
            true,
        ),
        other => bail!("unknown resource {other:?}"),
    };
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok((
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version,
            kind: kind.into(),
            plural: plural.into(),
        },
        namespaced,
    ))
}

pub async fn run(args: DoctorArgs) -> Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes credentials (in-cluster or kubeconfig)")?;
    let namespace = client.default_namespace().to_string();
    println!("namespace: {namespace}");
    for check in &args.checks {
        let mut words = check.split_whitespace();
        let (Some(verb), Some(name), None) = (words.next(), words.next(), words.next()) else {
            bail!("--check {check:?}: write it as \"VERB RESOURCE\"");
        };
        if verb != "list" {
            bail!("--check {check:?}: only the verb list is supported");
        }
        let (resource, namespaced) = resource(name)?;
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(client.clone(), &namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => println!("{verb} {name}: allowed"),
            Err(kube::Error::Api(status)) => println!(
                "{verb} {name}: forbidden ({} {}: {})",
                status.code, status.reason, status.message
            ),
            Err(e) => println!("{verb} {name}: error ({e})"),
        }
    }
    Ok(())
}
