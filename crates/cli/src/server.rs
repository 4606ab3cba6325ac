//! `ferry server`: the model server (OIP v2 REST + gRPC) as a process.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use ferry_server::{ModelConfig, ServerConfig};

#[derive(Args)]
pub struct ServerArgs {
    /// A model to serve: NAME=PATH[,version=V][,tokenizer=FILE][,max_batch_size=N]
    /// [,max_queue_delay_ms=MS][,max_queue=N]. Repeat for several models.
    #[arg(long = "model", value_name = "NAME=PATH[,OPTIONS]")]
    models: Vec<String>,
    /// Address of the REST (HTTP/1.1 and h2c) listener.
    #[arg(long, default_value = "127.0.0.1:8000")]
    http_addr: std::net::SocketAddr,
    /// Address of the gRPC listener.
    #[arg(long, default_value = "127.0.0.1:8001")]
    grpc_addr: std::net::SocketAddr,
    /// Also serve REST on this Unix socket (`ferry up` gives its replicas one, so the router
    /// skips the TCP stack); the file is replaced when stale and removed on exit.
    #[arg(long, value_name = "PATH")]
    http_unix: Option<std::path::PathBuf>,
    /// Also serve gRPC on this Unix socket, as --http-unix does REST.
    #[arg(long, value_name = "PATH")]
    grpc_unix: Option<std::path::PathBuf>,
    /// Largest accepted request body (REST) or message (gRPC), in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// Inference threads (the bounded compute pool); default: one per CPU.
    #[arg(long)]
    compute_threads: Option<usize>,
    /// Seconds to let in-flight requests finish after SIGTERM before exiting anyway.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_seconds: u64,
    /// Once every listener (the Unix sockets included) is bound, write
    /// `{"http": ADDR, "grpc": ADDR}` to this file (atomically), so a supervisor that asked for
    /// port 0 learns the ports.
    #[arg(long, value_name = "FILE")]
    addr_file: Option<std::path::PathBuf>,
    /// Where models fetched from a store (s3://, gs://, http(s)://, oci://) are cached; every
    /// server on the node naming the same directory shares one copy.
    #[arg(long, env = "FERRY_MODEL_CACHE", value_name = "DIR")]
    model_cache: Option<std::path::PathBuf>,
    /// The model cache's size limit (a quantity: 20Gi); least recently used models go beyond it.
    #[arg(long, env = "FERRY_MODEL_CACHE_SIZE", value_name = "QUANTITY", value_parser = parse_size)]
    model_cache_size: Option<u64>,
    /// A pool server's memory budget (a quantity: 3Gi): models registered to load on demand
    /// (`POST /v2/repository/models/NAME/register`) are loaded by their first request, the
    /// least recently used evicted so the resident models' measured footprints stay within it.
    #[arg(long, value_name = "QUANTITY", value_parser = parse_size)]
    memory_budget: Option<u64>,
    /// Exit with status 3 when a --model fails to load, quoting why on stderr (a container's
    /// restart back-off then says so), instead of staying up with the model unavailable.
    #[arg(long)]
    exit_on_load_failure: bool,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let mut config = ServerConfig {
        http_addr: args.http_addr,
        grpc_addr: args.grpc_addr,
        http_unix: args.http_unix,
        grpc_unix: args.grpc_unix,
        max_body_bytes: args.max_body_bytes,
        memory_budget: args.memory_budget,
        ..ServerConfig::default()
    };
    if let Some(n) = args.compute_threads {
        config.compute_threads = n.max(1);
    }
    if let Some(dir) = args.model_cache {
        config.model_cache = dir;
    }
    if let Some(bytes) = args.model_cache_size {
        config.model_cache_bytes = bytes;
    }
    for spec in &args.models {
        config.models.push(ModelConfig::parse(spec)?);
    }
    if config.models.is_empty() {
        tracing::warn!(
            "no --model given: the server starts empty (load models through the repository API)"
        );
    }
    let names: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let server = ferry_server::start(config).await?;
    if let Some(path) = &args.addr_file {
        let text = serde_json::json!({
            "http": server.http_addr.to_string(),
            "grpc": server.grpc_addr.to_string(),
        })
        .to_string();
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text)
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("cannot write --addr-file {}", path.display()))?;
    }
    let failed = async {
        if !args.exit_on_load_failure {
            return std::future::pending().await;
        }
        loop {
            for name in &names {
                if let Some(view) = server.repo.view(name)
                    && let ferry_server::repository::ModelState::Unavailable(reason) = &view.state
                {
                    return format!("model {name} failed to load: {reason}");
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        why = failed => {
            eprintln!("ferry server: {why}");
            std::process::exit(3);
        }
    }
    tracing::info!("shutdown signal received: draining in-flight requests");
    server.shutdown();
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    if tokio::time::timeout(grace, server.wait()).await.is_err() {
        tracing::warn!(
            grace_seconds = args.shutdown_grace_seconds,
            "in-flight requests did not finish in time; exiting"
        );
    }
    Ok(())
}

/// A byte quantity (`20Gi`, `500M`, `1e9`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    ferry_api::quantity::parse(text)
        .filter(|v| *v >= 0.0)
        .map(|v| v as u64)
        .ok_or_else(|| format!("{text:?} is not a quantity of bytes (e.g. 20Gi)"))
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
