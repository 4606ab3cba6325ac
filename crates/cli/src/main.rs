//! The `ferry` binary: every Ferry role behind one set of subcommands.
//!
//! - `ferry server`: one model server (OIP v2 REST + gRPC);
//! - `ferry up`: local mode (router, control API, supervised replicas, SQLite state);
//! - `ferry apply | get | describe | delete | logs | predict | rollout`: kubectl-like commands
//!   against the control API of a running `ferry up`.
//!
//! This crate only parses flags, prints, and wires the library crates.

mod apikey;
mod cluster;
mod console;
mod ctl;
mod doctor;
mod doctor_local;
mod gitops;
mod manifests;
mod plan;
mod predict;
mod print;
mod progress;
mod quota;
mod roles;
mod server;
mod serverpool;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ship ML models to production: one binary, laptop to cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ONNX models over the Open Inference Protocol v2 (REST + gRPC).
    Server(server::ServerArgs),
    /// Run InferenceServices on this machine: router, control API, supervised replicas.
    Up(UpArgs),
    /// Create or update InferenceServices from manifests (YAML/JSON, multi-document).
    Apply(ctl::ApplyArgs),
    /// Show what applying manifests would change, as a unified diff (exit code 1 when it
    /// would change something, 0 when not, 2 on error) — locally or in a cluster.
    Diff(gitops::DiffArgs),
    /// Every recorded change of an object: who, when, why, the diff (local mode).
    History(gitops::HistoryArgs),
    /// The web console: for a cluster with --kubeconfig (served here), else the link to local
    /// mode's.
    Console(console::ConsoleArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(CompletionArgs),
    /// List InferenceServices, or show one.
    Get(ctl::GetArgs),
    /// Show an InferenceService in detail: conditions, revisions, replicas, events.
    Describe(ctl::DescribeArgs),
    /// Delete InferenceServices (their replicas drain and stop).
    Delete(ctl::DeleteArgs),
    /// Print the logs of an InferenceService's replicas.
    Logs(ctl::LogsArgs),
    /// Send an inference request through the router (JSON rows or CSV).
    Predict(predict::PredictArgs),
    /// Follow, list, control or undo rollouts.
    #[command(subcommand)]
    Rollout(ctl::RolloutCommand),
    /// A/B experiments: per-variant figures.
    #[command(subcommand)]
    Experiment(ctl::ExperimentCommand),
    /// API keys per namespace: create (printed once), list, revoke.
    #[command(subcommand)]
    Apikey(apikey::ApiKeyCommand),
    /// Print Ferry's CustomResourceDefinitions (InferenceService, ServingRuntime) as YAML.
    Crd(CrdArgs),
    /// Print the Kubernetes objects the operator would create for manifests (GitOps review).
    Render(RenderArgs),
    /// Measure pooled models once each and plan them on a ServerPool: footprints, placement,
    /// servers needed packed vs one per model.
    Plan(plan::PlanArgs),
    /// Cluster mode: reconcile InferenceServices into Deployments and Services (in-cluster
    /// credentials, else the kubeconfig).
    Operator(roles::OperatorArgs),
    /// Cluster mode: the router, fed by watching InferenceServices and their Pods.
    Router(roles::RouterArgs),
    /// Download a model from an http(s) URL to a file (the init step of a ServingRuntime's pod).
    Fetch(FetchArgs),
    /// Check this machine for `ferry up` (state directory, daemon, router port, the
    /// manifests' model files), or with --kubeconfig a cluster (access, CRDs, operator,
    /// router, this user's rights); exit code 1 when a check failed. `doctor kube`: what this
    /// process may do on the Kubernetes API.
    Doctor(DoctorArgs),
}

#[derive(Args)]
struct CompletionArgs {
    /// The shell: `source <(ferry completion bash)`.
    shell: clap_complete::Shell,
}

#[derive(Args)]
struct CrdArgs {
    /// Write one file per CRD into this directory (as `deploy/crds/` holds them) instead.
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
}

#[derive(Args)]
struct FetchArgs {
    /// The model's URI: `s3://`, `gs://`, `http(s)://`, `oci://` (a path is copied).
    url: String,
    /// Where to put it: the file (or, for a directory model, the directory); it appears only
    /// once complete. Omit it to only fill the cache and print the cached path.
    file: Option<PathBuf>,
    /// The model cache (shared by the node's fetches); default: a directory beside FILE.
    #[arg(long, env = "FERRY_MODEL_CACHE", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// The cache's size limit (a quantity: 20Gi).
    #[arg(long, env = "FERRY_MODEL_CACHE_SIZE", value_name = "QUANTITY", value_parser = server::parse_size)]
    cache_size: Option<u64>,
}

#[derive(Args)]
struct RenderArgs {
    /// Manifest file or directory; `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Namespace for manifests that name none.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// The ferry image the Deployments run.
    #[arg(long, default_value = concat!("ghcr.io/ferry-dev/ferry:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Extra node selector for every pod, KEY=VALUE (repeatable).
    #[arg(long = "node-selector", value_name = "KEY=VALUE")]
    node_selector: Vec<String>,
    /// A node directory every predictor pod on a node shares as its model cache (hostPath;
    /// must be writable by UID 65532). Default: an emptyDir per pod.
    #[arg(long, value_name = "DIR")]
    model_cache_host_path: Option<String>,
}

/// TLS at the router: `--tls-cert` / `--tls-key` pairs, in order; the first pair is the
/// default, the others are served to clients whose SNI names them.
#[derive(Args, Clone)]
struct TlsArgs {
    /// A certificate chain (PEM); repeat for more certificates (chosen by SNI).
    #[arg(
        long,
        value_name = "FILE",
        env = "FERRY_TLS_CERT",
        value_delimiter = ','
    )]
    tls_cert: Vec<PathBuf>,
    /// The private key (PEM) of the `--tls-cert` at the same position.
    #[arg(
        long,
        value_name = "FILE",
        env = "FERRY_TLS_KEY",
        value_delimiter = ','
    )]
    tls_key: Vec<PathBuf>,
}

impl TlsArgs {
    fn pairs(&self) -> Result<Vec<ferry_router::CertPair>> {
        if self.tls_cert.len() != self.tls_key.len() {
            anyhow::bail!(
                "--tls-cert given {} times and --tls-key {} times: give one key per certificate, in the same order",
                self.tls_cert.len(),
                self.tls_key.len()
            );
        }
        Ok(self
            .tls_cert
            .iter()
            .zip(&self.tls_key)
            .map(|(cert, key)| ferry_router::CertPair {
                cert: cert.clone(),
                key: key.clone(),
            })
            .collect())
    }
}

#[derive(Subcommand)]
enum DoctorCommand {
    /// Try the given API calls for real and print which are allowed (in-cluster credentials,
    /// else the kubeconfig).
    Kube(doctor::DoctorArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct DoctorArgs {
    #[command(subcommand)]
    command: Option<DoctorCommand>,
    #[command(flatten)]
    check: doctor_local::LocalDoctorArgs,
}

#[derive(Args)]
struct UpArgs {
    /// State directory (SQLite state, token, logs).
    #[arg(long, env = "FERRY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Address of the router (inference traffic, REST and gRPC).
    #[arg(long, default_value = "127.0.0.1:8080")]
    router_addr: SocketAddr,
    /// Address of the control API (port 0: any free port, written to the state directory).
    #[arg(long, default_value = "127.0.0.1:0")]
    api_addr: SocketAddr,
    /// Seconds between SIGTERM and SIGKILL when a replica stops.
    #[arg(long, default_value_t = 30)]
    termination_grace_seconds: u64,
    /// First restart delay of a crashed replica, in milliseconds (doubles per restart).
    #[arg(long, default_value_t = 1000)]
    restart_backoff_ms: u64,
    /// Manifests to apply once running (file, directory or `-`); prints a ready-to-run curl.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// With TLS: plain HTTP too, on this address.
    #[arg(long, value_name = "ADDR")]
    router_plain_addr: Option<SocketAddr>,
    /// In-flight slots namespaces share fairly once two or more send (default: this
    /// machine's cores, which every replica shares; 0: first come, first served).
    #[arg(long, env = "FERRY_FAIR_SLOTS", value_name = "N")]
    fair_slots: Option<usize>,
    /// Requests one namespace may have waiting for its share (default: 64 per slot; beyond:
    /// 503 with Retry-After).
    #[arg(long, env = "FERRY_FAIR_QUEUE", value_name = "N")]
    fair_queue: Option<usize>,
}

/// What a model's load allocated on its own thread (`allocation-counter`, linked here, is the
/// binary's global allocator: it counts per thread), so `ferry server` measures what each
/// model keeps while other threads serve requests (ferry_server::footprint).
fn heap_of(work: &mut dyn FnMut()) -> (i64, u64) {
    let info = allocation_counter::measure(work);
    (info.bytes_current, info.bytes_max)
}

fn main() {
    ferry_server::footprint::count_heap_with(heap_of);
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Server(args) => runtime.block_on(traced("ferry-server", server::run(args))),
        // The daemon's spans are its router's.
        Command::Up(args) => runtime.block_on(traced("ferry-router", up(args))),
        Command::Apply(args) => runtime.block_on(ctl::apply(args)),
        Command::Diff(args) => match runtime.block_on(gitops::diff(args)) {
            Ok(false) => Ok(()),
            Ok(true) => std::process::exit(1),
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::exit(2);
            }
        },
        Command::History(args) => runtime.block_on(gitops::history(args)),
        Command::Console(args) => runtime.block_on(console::run(args)),
        Command::Completion(args) => {
            use clap::CommandFactory;
            clap_complete::generate(
                args.shell,
                &mut Cli::command(),
                "ferry",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Get(args) => runtime.block_on(ctl::get(args)),
        Command::Describe(args) => runtime.block_on(ctl::describe(args)),
        Command::Delete(args) => runtime.block_on(ctl::delete(args)),
        Command::Logs(args) => runtime.block_on(ctl::logs(args)),
        Command::Predict(args) => runtime.block_on(predict::predict(args)),
        Command::Rollout(command) => runtime.block_on(ctl::rollout(command)),
        Command::Experiment(command) => runtime.block_on(ctl::experiment(command)),
        Command::Apikey(command) => runtime.block_on(apikey::run(command)),
        Command::Doctor(DoctorArgs {
            command: Some(DoctorCommand::Kube(args)),
            ..
        }) => runtime.block_on(doctor::run(args)),
        Command::Doctor(DoctorArgs { check, .. }) => {
            if !runtime.block_on(doctor_local::run(check))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Fetch(args) => runtime.block_on(fetch(args)),
        Command::Crd(args) => crd(args),
        Command::Render(args) => render(args),
        Command::Plan(args) => runtime.block_on(plan::run(args)),
        Command::Operator(args) => runtime.block_on(roles::operator(args)),
        Command::Router(args) => {
            runtime.block_on(traced("ferry-router", roles::cluster_router(args)))
        }
    }
}

/// Run `work` exporting this process's spans as `service` when an OTLP receiver is configured
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`); what is still queued is sent when it returns.
async fn traced(service: &'static str, work: impl Future<Output = Result<()>>) -> Result<()> {
    #[cfg(feature = "otlp")]
    let _exporting = ferry_trace::init(service)?;
    #[cfg(not(feature = "otlp"))]
    let _ = service;
    work.await
}

async fn fetch(args: FetchArgs) -> Result<()> {
    let cache_dir = match (&args.cache_dir, &args.file) {
        (Some(dir), _) => dir.clone(),
        (None, Some(file)) => file
            .parent()
            .map_or_else(|| PathBuf::from("."), PathBuf::from)
            .join(".ferry-model-cache"),
        (None, None) => std::env::temp_dir().join("ferry-model-cache"),
    };
    let limit = args
        .cache_size
        .unwrap_or(ferry_storage::DEFAULT_LIMIT_BYTES);
    let fetcher = ferry_storage::Fetcher::new(ferry_storage::Cache::new(&cache_dir, limit));
    let fetched = fetcher.fetch(&args.url).await.map_err(anyhow::Error::msg)?;
    let how = if fetched.cache_hit {
        "found in the cache".to_string()
    } else {
        format!("{} bytes downloaded", fetched.bytes)
    };
    match &args.file {
        Some(dest) => {
            ferry_storage::layout::place(&fetched.path, dest)
                .with_context(|| format!("cannot put the model at {}", dest.display()))?;
            println!(
                "fetched {} to {} ({how}, {} files)",
                args.url,
                dest.display(),
                fetched.files
            );
        }
        None => println!("fetched {} to {} ({how})", args.url, fetched.path.display()),
    }
    Ok(())
}

fn render(args: RenderArgs) -> Result<()> {
    let text = manifests::read_manifest_files(&args.files)?;
    let parsed = ferry_api::parse_cluster_manifests(&text, &args.namespace)?;
    let node_selector = roles::node_selector(&args.node_selector)?;
    let options = ferry_render::RenderOptions {
        image: args.image,
        node_selector,
        model_cache_host_path: args.model_cache_host_path,
        server_env: Vec::new(),
    };
    print!("{}", ferry_render::documents(&parsed, &options)?);
    Ok(())
}

fn crd(args: CrdArgs) -> Result<()> {
    match args.write {
        None => print!("{}", ferry_api::crd::all_yaml()),
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for crd in ferry_api::crd::crds() {
                let path = dir.join(ferry_api::crd::file_name(&crd));
                std::fs::write(&path, ferry_api::crd::to_yaml(&crd))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

async fn up(args: UpArgs) -> Result<()> {
    let state_dir = args
        .state_dir
        .unwrap_or_else(ferry_local::paths::default_state_dir);
    if !args.files.is_empty() {
        let dirs = ferry_local::paths::StateDir::new(&state_dir);
        let files = args.files.clone();
        tokio::spawn(async move {
            if let Err(error) = ctl::quick_start(&dirs, &files).await {
                eprintln!("error: applying {files:?} failed: {error:#}");
            }
        });
    }
    let config = ferry_local::daemon::DaemonConfig {
        state_dir,
        router_addr: args.router_addr,
        api_addr: args.api_addr,
        program: ferry_local::supervisor::current_program(),
        supervisor: ferry_local::supervisor::SupervisorConfig {
            termination_grace: std::time::Duration::from_secs(args.termination_grace_seconds),
            backoff_base: std::time::Duration::from_millis(args.restart_backoff_ms),
            ..Default::default()
        },
        tls: args.tls.pairs()?,
        plain_router_addr: args.router_plain_addr,
        fair: ferry_router::FairConfig::from_flags(
            args.fair_slots
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            args.fair_queue,
        ),
    };
    ferry_local::daemon::run(config, server::shutdown_signal()).await?;
    Ok(())
}
