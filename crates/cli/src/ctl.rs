//! Client commands of local mode: they talk to the control API of a running `ferry up`
//! (found through the state directory) and to its router.

use ferry_core::progressive::Control;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use ferry_api::InferenceService;
use ferry_local::client::{Client, ClientError};
use ferry_local::paths::{StateDir, default_state_dir};
use ferry_local::wire::{Applied, ApplyResult};
use serde_json::{Value, json};

use crate::print;

#[derive(Args, Clone)]
pub struct Common {
    /// State directory of the `ferry up` to talk to.
    #[arg(long, env = "FERRY_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Namespace.
    #[arg(short, long, default_value = "default", global = true)]
    pub(crate) namespace: String,
}

impl Common {
    pub(crate) fn dirs(&self) -> StateDir {
        StateDir::new(self.state_dir.clone().unwrap_or_else(default_state_dir))
    }
    pub(crate) fn client(&self) -> Result<Client> {
        Ok(Client::connect(&self.dirs())?)
    }
}

/// Output formats.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Yaml,
    Json,
    Wide,
}

#[derive(Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    common: Common,
    /// Manifest file or directory (its *.yaml, *.yml, *.json files); `-` reads stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Wait until every applied InferenceService has rolled out (or failed).
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Apply to the cluster this kubeconfig names (server-side apply; InferenceServices get
    /// their change cause: who, and this command) instead of local mode.
    #[arg(long, conflicts_with = "wait")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Kind: inferenceservice(s) or isvc, resourcequota(s) or quota, serverpool(s) or pool.
    pub(crate) kind: String,
    pub(crate) name: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short, long, value_enum)]
    pub(crate) output: Option<Output>,
    /// After listing, print each change (InferenceServices) until interrupted.
    #[arg(short, long)]
    watch: bool,
}

#[derive(Args)]
pub struct DescribeArgs {
    #[command(flatten)]
    common: Common,
    kind: String,
    name: String,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    common: Common,
    kind: Option<String>,
    name: Option<String>,
    /// Delete what these manifests describe.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    common: Common,
    name: String,
    #[arg(long, default_value_t = 100)]
    tail: usize,
}

/// Which InferenceService a rollout control is for: local mode's, or (`--kubeconfig`) a
/// cluster's, where the control is the same annotation `kubectl annotate` would set.
#[derive(Args, Clone)]
pub struct ControlTarget {
    #[command(flatten)]
    common: Common,
    name: String,
    /// Act on the cluster this kubeconfig names instead of local mode.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ExperimentCommand {
    /// Per-variant requests, errors, p99 and feedback (mean reward with its 95 % interval).
    Status {
        #[command(flatten)]
        target: ControlTarget,
    },
}

pub async fn experiment(command: ExperimentCommand) -> Result<()> {
    let ExperimentCommand::Status { target } = command;
    let isvc = match &target.kubeconfig {
        Some(path) => crate::cluster::get(path, &target.common.namespace, &target.name).await?,
        None => {
            target
                .common
                .client()?
                .get(&target.common.namespace, &target.name)
                .await?
        }
    };
    let Some(experiment) = isvc.status.as_ref().and_then(|s| s.experiment.as_ref()) else {
        bail!(
            "InferenceService {} has no experiment figures (spec.experiment, and a status written since)",
            target.name
        );
    };
    print!("{}", print::experiment(experiment));
    Ok(())
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Wait for the current rollout to finish, showing its progress.
    Status {
        #[command(flatten)]
        common: Common,
        name: String,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// List the revisions of an InferenceService.
    History {
        #[command(flatten)]
        common: Common,
        name: String,
    },
    /// Let a canary go past its current step's pause (`--full`: straight to 100 %).
    Promote {
        #[command(flatten)]
        target: ControlTarget,
        #[arg(long)]
        full: bool,
    },
    /// Roll a canary back: all traffic to the stable revision.
    Abort {
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Hold a canary at its current weight (analysis still runs).
    Pause {
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Lift a pause.
    Resume {
        #[command(flatten)]
        target: ControlTarget,
    },
    /// Roll back to the previous revision (or `--to-revision`).
    Undo {
        #[command(flatten)]
        common: Common,
        name: String,
        #[arg(long)]
        to_revision: Option<String>,
    },
}

fn outcome(result: Applied) -> &'static str {
    match result {
        Applied::Created => "created",
        Applied::Configured => "configured",
        Applied::Unchanged => "unchanged",
    }
}

fn check_kind(kind: &str) -> Result<()> {
    match kind.to_ascii_lowercase().as_str() {
        "inferenceservice"
        | "inferenceservices"
        | "isvc"
        | "inferenceservice.ferry.dev"
        | "inferenceservices.ferry.dev" => Ok(()),
        other => bail!(
            "unknown kind {other:?}: known kinds are inferenceservice (isvc), resourcequota (quota) and serverpool (pool)"
        ),
    }
}

pub(crate) fn refused(error: ClientError) -> anyhow::Error {
    if let ClientError::Refused { body, .. } = &error
        && !body.documents.is_empty()
    {
        let mut lines = vec!["the manifests were refused; nothing was applied:".to_string()];
        for doc in &body.documents {
            for e in &doc.errors {
                lines.push(format!(
                    "  document {} ({}): {}: {}",
                    doc.document, doc.object, e.path, e.message
                ));
            }
        }
        return anyhow!(lines.join("\n"));
    }
    anyhow!(error)
}

fn print_applied(result: &ApplyResult) {
    println!(
        "inferenceservice.ferry.dev/{} {} (revision {})",
        result.name,
        outcome(result.result),
        result.revision
    );
}

pub async fn apply(args: ApplyArgs) -> Result<()> {
    if let Some(kubeconfig) = &args.kubeconfig {
        return crate::gitops::cluster_apply(&args.files, &args.common.namespace, kubeconfig).await;
    }
    let text = crate::manifests::read_manifests(&args.files)?;
    let client = args.common.client()?;
    let answer = client
        .apply_request(&ferry_local::wire::ApplyRequest {
            manifests: text,
            namespace: args.common.namespace.clone(),
            dry_run: false,
            cause: Some(crate::gitops::command_line()),
        })
        .await
        .map_err(refused)?;
    for result in &answer.results {
        print_applied(result);
    }
    for quota in &answer.quotas {
        println!("resourcequota/{} {}", quota.name, outcome(quota.result));
    }
    for namespace in &answer.namespaces {
        println!("namespace/{} {}", namespace.name, outcome(namespace.result));
    }
    for pool in &answer.pools {
        println!(
            "serverpool.ferry.dev/{} {}",
            pool.name,
            outcome(pool.result)
        );
    }
    if args.wait {
        for result in &answer.results {
            let timeout = Duration::from_secs(args.timeout);
            wait_rollout(&client, &result.namespace, &result.name, timeout).await?;
        }
    }
    Ok(())
}

/// Follow a rollout until it completes; fail with the reason when it cannot.
async fn wait_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    let mut fetch_lines = std::collections::BTreeSet::new();
    let bars = crate::progress::RolloutBars::new(namespace, name);
    loop {
        let isvc = client.get(namespace, name).await?;
        let progress = ferry_core::status::rollout_progress(&isvc);
        if let Some(bars) = &bars {
            bars.rollout(&isvc, &progress);
        } else if progress.message != last {
            println!("{namespace}/{name}: {}", progress.message);
        }
        last = progress.message.clone();
        // A starting replica that fetches its model says how far it is.
        if !progress.done {
            for replica in client.replicas(namespace, name).await.unwrap_or_default() {
                let fetching = replica
                    .last_log_lines
                    .iter()
                    .rev()
                    .find(|l| l.contains("fetching ") && l.contains(" MB"));
                if let (Some(bars), Some(line)) = (&bars, fetching) {
                    bars.fetch(&replica.id, line);
                } else if let Some(line) = fetching
                    && fetch_lines.insert(line.clone())
                {
                    let text = line.split("fetching ").nth(1).unwrap_or(line);
                    println!(
                        "{namespace}/{name}: replica {}: fetching {text}",
                        replica.id
                    );
                }
            }
        }
        if progress.done {
            if let Some(bars) = &bars {
                bars.finish(&progress.message);
            }
            return Ok(());
        }
        if let Some(reason) = progress.failed {
            if let Some(bars) = &bars {
                bars.abandon(&reason);
            }
            bail!("rollout of {namespace}/{name} failed: {reason}");
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {}s waiting for the rollout of {namespace}/{name}: {last}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ferry up -f`: once the control API answers, apply the manifests, wait for their rollouts,
/// and print a curl for each service that works as it is.
pub async fn quick_start(dirs: &StateDir, files: &[PathBuf]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (client, router) = loop {
        let api = std::fs::read_to_string(dirs.api_file())
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        // The api.json of this very process (a stale one of a crashed run names another pid).
        if let Some(api) = api.filter(|a| a["pid"].as_u64() == Some(u64::from(std::process::id())))
            && let Ok(client) = Client::connect(dirs)
        {
            break (
                client,
                api["router"].as_str().unwrap_or_default().to_string(),
            );
        }
        if Instant::now() > deadline {
            bail!("the control API did not come up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = crate::manifests::read_manifests(files)?;
    let answer = client.apply(&text, "default").await.map_err(refused)?;
    let http = reqwest::Client::new();
    for result in &answer.results {
        let (namespace, name) = (result.namespace.as_str(), result.name.as_str());
        print_applied(result);
        wait_rollout(&client, namespace, name, Duration::from_secs(300)).await?;
        let model = client.get(namespace, name).await?.model_name();
        let base = format!("http://{router}/v2/models/{model}");
        let metadata: Value = http
            .get(&base)
            .header(ferry_api::HEADER_NAMESPACE, namespace)
            .send()
            .await?
            .json()
            .await?;
        let inputs: Vec<Value> = metadata["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|input| {
                let shape: Vec<i64> = input["shape"].as_array().into_iter().flatten().map(|d| d.as_i64().filter(|d| *d > 0).unwrap_or(1)).collect();
                let count: i64 = shape.iter().product();
                let value = if input["datatype"].as_str().is_some_and(|d| d.starts_with("FP")) { json!(1.0) } else { json!(1) };
                json!({"name": input["name"], "datatype": input["datatype"], "shape": shape, "data": vec![value; count as usize]})
            })
            .collect();
        let body = json!({ "inputs": inputs }).to_string();
        let namespace_header = if namespace == "default" {
            String::new()
        } else {
            format!(" -H 'ferry-namespace: {namespace}'")
        };
        println!(
            "\n{namespace}/{name} is ready. Try:\n  curl -s {base}/infer{namespace_header} -H 'content-type: application/json' -d '{body}'\n"
        );
    }
    Ok(())
}

pub async fn get(args: GetArgs) -> Result<()> {
    if args.watch && check_kind(&args.kind).is_err() {
        bail!(
            "--watch follows inferenceservices; {} is listed without it",
            args.kind
        );
    }
    if crate::quota::is_quota(&args.kind) {
        return crate::quota::get(&args).await;
    }
    if crate::serverpool::is_pool(&args.kind) {
        return crate::serverpool::get(&args).await;
    }
    check_kind(&args.kind)?;
    if args.watch {
        return crate::watch::watch(&args, args.all_namespaces).await;
    }
    let client = args.common.client()?;
    let items: Vec<InferenceService> = match &args.name {
        Some(name) => vec![client.get(&args.common.namespace, name).await?],
        None => {
            let namespace = (!args.all_namespaces).then_some(args.common.namespace.as_str());
            client.list(namespace).await?
        }
    };
    // One object as it is; several in a kubectl-style List.
    let value = match &items[..] {
        [one] if args.name.is_some() => serde_json::to_value(one)?,
        _ => serde_json::to_value(List {
            api_version: "v1",
            kind: "List",
            items: &items,
        })?,
    };
    match args.output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&value)?),
        Some(Output::Yaml) => print!("{}", serde_norway::to_string(&value)?),
        wide => {
            if items.is_empty() {
                eprintln!("No resources found in {} namespace.", args.common.namespace);
            } else {
                print!(
                    "{}",
                    print::table(&items, args.all_namespaces, wide == Some(Output::Wide))
                );
            }
        }
    }
    Ok(())
}

pub async fn describe(args: DescribeArgs) -> Result<()> {
    check_kind(&args.kind)?;
    let client = args.common.client()?;
    let ns = &args.common.namespace;
    let isvc = client.get(ns, &args.name).await?;
    let replicas = client.replicas(ns, &args.name).await?;
    let events = client.events(ns, &args.name).await?;
    print!("{}", print::describe(&isvc, &replicas, &events));
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> Result<()> {
    let client = args.common.client()?;
    let mut targets = Vec::new();
    if !args.files.is_empty() {
        let text = crate::manifests::read_manifests(&args.files)?;
        let manifests = ferry_api::parse_manifests(&text, &args.common.namespace)?;
        for m in manifests {
            targets.push((
                m.isvc.namespace_or_default(),
                m.isvc.metadata.name.unwrap_or_default(),
            ));
        }
    } else {
        let (Some(kind), Some(name)) = (&args.kind, &args.name) else {
            bail!("give KIND NAME or -f FILE");
        };
        if crate::quota::is_quota(kind) {
            client.delete_quota(&args.common.namespace, name).await?;
            println!("resourcequota/{name} deleted");
            return Ok(());
        }
        if crate::serverpool::is_pool(kind) {
            client.delete_pool(&args.common.namespace, name).await?;
            println!("serverpool.ferry.dev/{name} deleted");
            return Ok(());
        }
        check_kind(kind)?;
        targets.push((args.common.namespace.clone(), name.clone()));
    }
    for (namespace, name) in targets {
        client.delete(&namespace, &name).await?;
        println!("inferenceservice.ferry.dev/{name} deleted");
    }
    Ok(())
}

pub async fn logs(args: LogsArgs) -> Result<()> {
    let client = args.common.client()?;
    print!(
        "{}",
        client
            .logs(&args.common.namespace, &args.name, args.tail)
            .await?
    );
    Ok(())
}

pub async fn rollout(command: RolloutCommand) -> Result<()> {
    match command {
        RolloutCommand::Status {
            common,
            name,
            timeout,
        } => {
            wait_rollout(
                &common.client()?,
                &common.namespace,
                &name,
                Duration::from_secs(timeout),
            )
            .await
        }
        RolloutCommand::History { common, name } => {
            let revisions = common.client()?.revisions(&common.namespace, &name).await?;
            print!("{}", print::history(&revisions));
            Ok(())
        }
        RolloutCommand::Promote { target, full } => {
            control(target, Control::Promote { full }, "promoted").await
        }
        RolloutCommand::Abort { target } => control(target, Control::Abort, "aborted").await,
        RolloutCommand::Pause { target } => control(target, Control::Pause, "paused").await,
        RolloutCommand::Resume { target } => control(target, Control::Resume, "resumed").await,
        RolloutCommand::Undo {
            common,
            name,
            to_revision,
        } => {
            let answer = common
                .client()?
                .rollback(&common.namespace, &name, to_revision.as_deref())
                .await?;
            println!(
                "inferenceservice.ferry.dev/{name} rolled back to {}",
                answer.revision
            );
            Ok(())
        }
    }
}

async fn control(target: ControlTarget, control: Control, done: &str) -> Result<()> {
    let ControlTarget {
        common,
        name,
        kubeconfig,
    } = target;
    let isvc = match kubeconfig {
        Some(path) => {
            crate::cluster::control_rollout(&path, &common.namespace, &name, control).await?
        }
        None => {
            common
                .client()?
                .control_rollout(&common.namespace, &name, control)
                .await?
        }
    };
    let revision = isvc
        .status
        .and_then(|s| s.rollout)
        .map(|r| r.canary_revision)
        .unwrap_or_default();
    println!("inferenceservice.ferry.dev/{name} {done} (revision {revision})");
    Ok(())
}

/// A kubectl-style list of objects.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    api_version: &'static str,
    kind: &'static str,
    items: &'a [InferenceService],
}
