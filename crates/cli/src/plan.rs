//! `ferry plan -f DIR [--pool NAME | --memory 4Gi --servers N]`: what a ServerPool would make
//! of manifests before they are applied. Each pooled model is loaded once, one at a time, in a
//! scratch `ferry server` (this binary, on loopback, a budget nothing reaches) that measures its footprint as a
//! pool server does; then the core's planner places them on the pool's servers, and the
//! servers needed packed are set against one server per copy (and, for a GPU pool, the GPUs).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ferry_api::{ServerPool, ServerPoolSpec};
use ferry_core::placement::{self, Model};
use ferry_core::pool::{self, PoolServer, Pooled};
use serde::Serialize;

#[derive(Args)]
pub struct PlanArgs {
    /// Manifest files or directories: InferenceServices, and the ServerPool they name.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The ServerPool (in the manifests) to plan; its services are those naming it.
    #[arg(long, conflicts_with = "memory")]
    pool: Option<String>,
    /// Plan every InferenceService of the manifests on servers with this memory budget each
    /// (a quantity) instead of a ServerPool's.
    #[arg(long, requires = "servers")]
    memory: Option<String>,
    /// Servers, with --memory.
    #[arg(long)]
    servers: Option<u32>,
    /// Overcommit percent, with --memory (default 100).
    #[arg(long, requires = "memory")]
    overcommit: Option<u32>,
    /// `json` for the whole plan.
    #[arg(short, long)]
    output: Option<String>,
}

/// One model as measured and placed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlannedModel {
    service: String,
    model: String,
    file_bytes: Option<u64>,
    measured_bytes: u64,
    peak_bytes: Option<u64>,
    copies: u32,
    servers: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Plan {
    pool: String,
    servers: u32,
    memory_budget_bytes: u64,
    overcommit_percent: u32,
    models: Vec<PlannedModel>,
    placed: usize,
    measured_bytes: u64,
    /// Fewest servers holding every copy resident (no overcommit).
    servers_needed_resident: Option<u32>,
    /// Fewest servers every copy can be registered on (with the overcommit).
    servers_needed_registered: Option<u32>,
    /// One server per copy, as without a pool.
    servers_one_per_copy: u32,
    /// GPUs per server in the pool's resources (whole, time-sliced or MIG slices).
    gpus_per_server: f64,
}

/// A scratch `ferry server` with no model and no budget.
struct Scratch {
    child: Child,
    http: String,
    dir: PathBuf,
}

impl Scratch {
    async fn start() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("ferry-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let addr_file = dir.join("addr.json");
        let child = Command::new(std::env::current_exe()?)
            .args([
                "server",
                "--http-addr",
                "127.0.0.1:0",
                "--memory-budget",
                "1Ti",
            ])
            .args(["--grpc-addr", "127.0.0.1:0", "--addr-file"])
            .arg(&addr_file)
            .env("FERRY_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a scratch ferry server")?;
        let mut scratch = Scratch {
            child,
            http: String::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && let Ok(addrs) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(http) = addrs["http"].as_str()
            {
                scratch.http = http.to_string();
                return Ok(scratch);
            }
            if Instant::now() > deadline {
                bail!("the scratch ferry server did not start within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pool's name and spec: from the manifests (`--pool`, or their only ServerPool), or made
/// of `--memory` and `--servers`.
fn pool_spec(args: &PlanArgs, pools: &[ServerPool]) -> Result<(Option<String>, ServerPoolSpec)> {
    if let Some(memory) = &args.memory {
        ferry_api::quantity::parse(memory)
            .ok_or_else(|| anyhow!("--memory: {memory:?} is not a quantity (4Gi, 512Mi)"))?;
        let spec = ServerPoolSpec {
            replicas: args.servers,
            memory_budget: Some(memory.clone()),
            overcommit_percent: args.overcommit,
            ..Default::default()
        };
        return Ok((None, spec));
    }
    let names: Vec<String> = pools
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let pool = match &args.pool {
        Some(name) => pools
            .iter()
            .find(|p| p.metadata.name.as_ref() == Some(name))
            .ok_or_else(|| {
                anyhow!("--pool: ServerPool {name:?} is not in the manifests (they hold {names:?})")
            })?,
        None => match pools {
            [one] => one,
            [] => bail!(
                "the manifests hold no ServerPool: name one with --pool, or give --memory and --servers"
            ),
            _ => bail!("the manifests hold several ServerPools ({names:?}): name one with --pool"),
        },
    };
    Ok((pool.metadata.name.clone(), pool.spec.clone()))
}

/// The GPUs a server of `spec` asks for: whole, time-sliced or MIG slices, summed.
fn gpus(spec: &ServerPoolSpec) -> f64 {
    spec.resources
        .iter()
        .flat_map(|r| &r.limits)
        .filter(|(name, _)| name.starts_with("nvidia.com/"))
        .filter_map(|(_, value)| ferry_api::quantity::parse(value))
        .sum()
}

pub async fn run(args: PlanArgs) -> Result<()> {
    let text = crate::manifests::read_manifests(&args.files)?;
    let parsed = ferry_api::manifest::parse_local_manifests(&text, "default")?;
    let (pool_name, spec) = pool_spec(&args, &parsed.pools)?;
    let services: Vec<&ferry_api::InferenceService> = parsed
        .services
        .iter()
        .map(|m| &m.isvc)
        .filter(|isvc| match &pool_name {
            Some(name) => isvc.spec.predictor.pool.as_ref() == Some(name),
            None => true,
        })
        .collect();
    if services.is_empty() {
        bail!(
            "no InferenceService in the manifests is placed on pool {}",
            pool_name.as_deref().unwrap_or("-")
        );
    }
    let budget = spec
        .memory_budget_bytes()
        .ok_or_else(|| anyhow!("the pool has no memoryBudget and no memory limit"))?;

    // Measure: each model loaded once, alone, as a pool server measures it.
    let scratch = Scratch::start().await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut measured = Vec::new();
    for isvc in &services {
        let model = isvc.model_name();
        let predictor = &isvc.spec.predictor;
        let path = predictor
            .model
            .local_path()
            .unwrap_or(&predictor.model.uri)
            .to_string();
        let body = serde_json::json!({ "parameters": { "path": path } });
        let response = http
            .post(format!(
                "http://{}/v2/repository/models/{model}/load",
                scratch.http
            ))
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "{model} ({}): the scratch server could not load it: {}",
                predictor.model.uri,
                response.text().await.unwrap_or_default()
            );
        }
        eprintln!("measured {model}");
        measured.push(model);
    }
    let index: serde_json::Value = http
        .post(format!("http://{}/v2/repository/index", scratch.http))
        .json(&serde_json::json!({}))
        .send()
        .await?
        .json()
        .await?;
    drop(scratch);
    let figure = |model: &str, field: &str| {
        index
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == model)
            .and_then(|e| e[field].as_u64())
    };

    let pooled: Vec<Pooled> = services
        .iter()
        .map(|isvc| {
            let measured = figure(&isvc.model_name(), "memoryBytes");
            Pooled::of(isvc, isvc.spec.predictor.model.local_file_bytes(), measured)
        })
        .collect();
    let servers: Vec<PoolServer> = (0..spec.replicas())
        .map(|i| PoolServer {
            id: format!("server-{i}"),
            ready: true,
            budget,
            ..Default::default()
        })
        .collect();
    let decision = pool::decide(&spec, &servers, &pooled);
    let as_models = |p: &Pooled| Model {
        id: p.model.clone(),
        bytes: p.measured.unwrap_or(0),
        copies: p.copies,
        busy: false,
    };
    let models: Vec<Model> = pooled.iter().map(as_models).collect();
    let overcommit = spec.overcommit_percent();
    let plan = Plan {
        pool: pool_name.unwrap_or_else(|| "(--memory)".into()),
        servers: spec.replicas(),
        memory_budget_bytes: budget,
        overcommit_percent: overcommit,
        placed: decision.placement.servers.len(),
        measured_bytes: models.iter().map(|m| m.bytes * u64::from(m.copies)).sum(),
        servers_needed_resident: placement::servers_needed(budget, &models),
        // A model above the budget is never resident: no number of servers takes it.
        servers_needed_registered: placement::servers_needed(budget, &models).and(
            placement::servers_needed(placement::capacity(budget, overcommit), &models),
        ),
        servers_one_per_copy: models.iter().map(|m| m.copies).sum(),
        gpus_per_server: gpus(&spec),
        models: pooled
            .iter()
            .map(|p| PlannedModel {
                service: p.service.clone(),
                model: p.model.clone(),
                file_bytes: p.file_bytes,
                measured_bytes: p.measured.unwrap_or(0),
                peak_bytes: figure(&p.model, "peakMemoryBytes"),
                copies: p.copies,
                servers: decision
                    .placement
                    .servers
                    .get(&p.model)
                    .cloned()
                    .unwrap_or_default(),
                reason: decision
                    .placement
                    .unplaced
                    .get(&p.model)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            })
            .collect(),
    };
    if args.output.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print_plan(&plan);
    }
    Ok(())
}

fn print_plan(plan: &Plan) {
    let kib = |b: u64| format!("{:.1}Ki", b as f64 / 1024.0);
    let mut rows = vec![
        ["MODEL", "FILE", "MEASURED", "PEAK", "COPIES", "SERVERS"]
            .map(String::from)
            .to_vec(),
    ];
    for m in &plan.models {
        rows.push(vec![
            m.model.clone(),
            m.file_bytes.map(kib).unwrap_or_else(|| "-".into()),
            kib(m.measured_bytes),
            m.peak_bytes.map(kib).unwrap_or_else(|| "-".into()),
            m.copies.to_string(),
            match (m.servers.is_empty(), m.reason.is_empty()) {
                (true, _) => format!("not placed: {}", m.reason),
                (false, true) => m.servers.join(","),
                (false, false) => format!("{} ({})", m.servers.join(","), m.reason),
            },
        ]);
    }
    print!("{}", crate::print::columns(&rows));
    let needed = |n: Option<u32>| {
        n.map_or("- (a model is larger than a server)".into(), |n| {
            n.to_string()
        })
    };
    println!();
    println!(
        "pool {}: {} servers of {} budget (overcommit {} %): {} of {} models placed, {} measured in all",
        plan.pool,
        plan.servers,
        kib(plan.memory_budget_bytes),
        plan.overcommit_percent,
        plan.placed,
        plan.models.len(),
        kib(plan.measured_bytes),
    );
    println!(
        "servers needed: {} with every copy resident, {} with the overcommit (LRU), {} with one server per copy",
        needed(plan.servers_needed_resident),
        needed(plan.servers_needed_registered),
        plan.servers_one_per_copy
    );
    if plan.gpus_per_server > 0.0 {
        let gpus = |n: Option<u32>| {
            n.map_or("-".into(), |n| {
                format!("{}", f64::from(n) * plan.gpus_per_server)
            })
        };
        println!(
            "GPUs needed: {} resident, {} with the overcommit, {} one per copy",
            gpus(plan.servers_needed_resident),
            gpus(plan.servers_needed_registered),
            f64::from(plan.servers_one_per_copy) * plan.gpus_per_server
        );
    }
}
