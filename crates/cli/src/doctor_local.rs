//! `ferry doctor`: what stands between this machine and a working `ferry up` — the state
//! directory, the daemon, the router's port, the manifests' model files — and, with
//! `--kubeconfig`, between these credentials and a cluster running Ferry (access, the CRDs, the
//! operator and router, and what this user may do). One line per check; exit code 1 when one
//! failed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use ferry_api::InferenceService;
use ferry_api::k8s_openapi::api::apps::v1::Deployment;
use ferry_api::k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use ferry_api::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::PostParams;

use crate::ctl::Common;

#[derive(Args)]
pub struct LocalDoctorArgs {
    #[command(flatten)]
    common: Common,
    /// Manifests whose models to check (file or directory; repeatable).
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// The router address `ferry up` will listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    router_addr: SocketAddr,
    /// Check a cluster instead: access, Ferry's CRDs, operator and router, this user's rights.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

/// The checks' lines, and whether one failed.
#[derive(Default)]
struct Report {
    failed: bool,
}

impl Report {
    fn ok(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("ok    {what}: {detail}");
    }
    fn note(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("note  {what}: {detail}");
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failed = true;
        println!("FAIL  {what}: {detail}");
    }
}

/// Exit code 1 when a check failed.
pub async fn run(args: LocalDoctorArgs) -> Result<bool> {
    let mut report = Report::default();
    match &args.kubeconfig {
        Some(kubeconfig) => cluster(&mut report, kubeconfig).await,
        None => local(&mut report, &args).await,
    }
    models(&mut report, &args);
    Ok(!report.failed)
}

async fn local(report: &mut Report, args: &LocalDoctorArgs) {
    let dirs = args.common.dirs();
    match std::fs::create_dir_all(&dirs.root).and_then(|_| {
        let probe = dirs.root.join(".doctor-probe");
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)
    }) {
        Ok(()) => report.ok(
            "state directory",
            format!("{} (writable)", dirs.root.display()),
        ),
        Err(e) => report.fail("state directory", format!("{}: {e}", dirs.root.display())),
    }
    let api = std::fs::read_to_string(dirs.api_file())
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let mut daemon_router = None;
    match (&api, args.common.client()) {
        (Some(api), Ok(client)) => match client.list(None).await {
            Ok(items) => {
                daemon_router = api["router"].as_str().map(str::to_string);
                report.ok(
                    "ferry up",
                    format!(
                        "running (pid {}), control API {} answers: {} InferenceServices; router {}",
                        api["pid"],
                        api["api"].as_str().unwrap_or("?"),
                        items.len(),
                        api["router"].as_str().unwrap_or("?")
                    ),
                );
            }
            Err(e) => report.fail(
                "ferry up",
                format!("api.json names a daemon that does not answer: {e}"),
            ),
        },
        _ => report.note("ferry up", "not running (`ferry up` starts it)"),
    }
    let wanted = args.router_addr.to_string();
    if daemon_router.as_deref() == Some(wanted.as_str()) {
        report.ok("router port", format!("{wanted}: this ferry up's"));
    } else {
        match std::net::TcpListener::bind(args.router_addr) {
            Ok(_) => report.ok("router port", format!("{wanted} is free")),
            Err(e) => report.fail(
                "router port",
                format!("{wanted}: {e} (another process has it: ferry up --router-addr ADDR)"),
            ),
        }
    }
}

fn models(report: &mut Report, args: &LocalDoctorArgs) {
    if args.files.is_empty() {
        return;
    }
    let text = match crate::manifests::read_manifests(&args.files) {
        Ok(text) => text,
        Err(e) => return report.fail("manifests", format!("{e:#}")),
    };
    let parsed = match ferry_api::parse_local_manifests(&text, &args.common.namespace) {
        Ok(parsed) => parsed,
        Err(e) => return report.fail("manifests", e),
    };
    for manifest in &parsed.services {
        check_models(report, &manifest.isvc);
    }
}

fn check_models(report: &mut Report, isvc: &InferenceService) {
    let name = format!(
        "{}/{}",
        isvc.namespace_or_default(),
        isvc.metadata.name.clone().unwrap_or_default()
    );
    let mut predictors = vec![("spec.predictor".to_string(), isvc.spec.predictor.clone())];
    predictors.extend(
        isvc.variants()
            .into_iter()
            .map(|(variant, _, predictor, _)| {
                (format!("spec.experiment variant {variant}"), predictor)
            }),
    );
    if let Some((_, predictor, _)) = isvc.shadow() {
        predictors.push(("spec.shadow".into(), predictor));
    }
    for (field, predictor) in predictors {
        let what = format!("model of {name} ({field}.model.uri)");
        let uri = &predictor.model.uri;
        match predictor.model.local_path() {
            Some(path) => match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() && std::fs::File::open(path).is_ok() => {
                    report.ok(&what, format!("{path} ({} bytes, readable)", meta.len()))
                }
                Ok(meta) if meta.is_dir() => {
                    report.ok(&what, format!("{path} (a directory model)"))
                }
                Ok(_) => report.fail(&what, format!("{path}: not readable")),
                Err(e) => report.fail(&what, format!("{path}: {e}")),
            },
            None => report.note(
                &what,
                format!("{uri}: fetched by the server at start, not checked here"),
            ),
        }
    }
}

async fn cluster(report: &mut Report, kubeconfig: &std::path::Path) {
    let client = match crate::cluster::client(kubeconfig).await {
        Ok(client) => client,
        Err(e) => return report.fail("cluster", format!("{e:#}")),
    };
    match client.apiserver_version().await {
        Ok(v) => report.ok(
            "cluster",
            format!(
                "{} answers: Kubernetes {}",
                kubeconfig.display(),
                v.git_version
            ),
        ),
        Err(e) => return report.fail("cluster", format!("{}: {e}", kubeconfig.display())),
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        "inferenceservices.ferry.dev",
        "serverpools.ferry.dev",
        "servingruntimes.ferry.dev",
        "clusterservingruntimes.ferry.dev",
    ] {
        match crds.get_opt(crd).await {
            Ok(Some(_)) => report.ok("CRD", crd),
            Ok(None) => report.fail(
                "CRD",
                format!("{crd} is not installed (deploy/crds/ or the Helm chart)"),
            ),
            Err(e) => report.fail("CRD", format!("{crd}: {e}")),
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "ferry-system");
    for name in ["ferry-operator", "ferry-router"] {
        match deployments.get_opt(name).await {
            Ok(Some(d)) => {
                let ready = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                if ready > 0 {
                    report.ok(name, format!("{ready}/{want} replicas ready"))
                } else {
                    report.fail(name, format!("0/{want} replicas ready (kubectl -n ferry-system describe deploy/{name})"))
                }
            }
            Ok(None) => report.fail(
                name,
                "not installed in ferry-system (deploy/ or the Helm chart)",
            ),
            Err(e) => report.fail(name, e),
        }
    }
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let namespace = client.default_namespace().to_string();
    for (verb, resource) in [
        ("create", "inferenceservices"),
        ("patch", "inferenceservices"),
        ("list", "pods"),
        ("get", "pods/log"),
    ] {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_string())),
            None => (resource, None),
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.clone()),
                    verb: Some(verb.into()),
                    group: Some(if resource == "inferenceservices" {
                        "ferry.dev".into()
                    } else {
                        String::new()
                    }),
                    resource: Some(resource.into()),
                    subresource: subresource.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let what = format!(
            "may {verb} {resource}{} in {namespace}",
            subresource.map(|s| format!("/{s}")).unwrap_or_default()
        );
        match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {
                report.ok(&what, "yes")
            }
            Ok(answer) => report.fail(
                &what,
                format!(
                    "no{}",
                    answer
                        .status
                        .and_then(|s| s.reason)
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ),
            ),
            Err(e) => report.fail(&what, e),
        }
    }
}
