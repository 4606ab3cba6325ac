//! The `ferry` binary: every Ferry role behind one set of subcommands.
//!
//! Today: `ferry server`, the model server. Later roles (`up`, `apply`, `operator`, `router`)
//! join here as subcommands; this crate only parses flags and wires the library crates.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_server::{ModelConfig, ServerConfig};
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
    Server(ServerArgs),
}

#[derive(Args)]
struct ServerArgs {
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
    /// Largest accepted request body (REST) or message (gRPC), in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// Inference threads (the bounded compute pool); default: one per CPU.
    #[arg(long)]
    compute_threads: Option<usize>,
    /// Seconds to let in-flight requests finish after SIGTERM before exiting anyway.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_seconds: u64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Server(args) => runtime.block_on(server(args)),
    }
}

async fn server(args: ServerArgs) -> Result<()> {
    let mut config = ServerConfig {
        http_addr: args.http_addr,
        grpc_addr: args.grpc_addr,
        max_body_bytes: args.max_body_bytes,
        ..ServerConfig::default()
    };
    if let Some(n) = args.compute_threads {
        config.compute_threads = n.max(1);
    }
    for spec in &args.models {
        config.models.push(ModelConfig::parse(spec)?);
    }
    if config.models.is_empty() {
        tracing::warn!(
            "no --model given: the server starts empty (load models through the repository API)"
        );
    }
    let server = ferry_server::start(config).await?;
    shutdown_signal().await;
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

async fn shutdown_signal() {
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
