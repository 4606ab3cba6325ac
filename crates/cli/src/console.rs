//! `ferry console`: the web console. With `--kubeconfig`, served here for that cluster with
//! these credentials (`ferry_operator::console`); without, the link to local mode's console
//! (served by the running `ferry up`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::ctl::Common;

#[derive(Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    common: Common,
    /// Serve the console for the cluster this kubeconfig names (its current context).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where to serve it (with --kubeconfig; port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:9090")]
    addr: SocketAddr,
}

pub async fn run(args: ConsoleArgs) -> Result<()> {
    let Some(kubeconfig) = &args.kubeconfig else {
        let dirs = args.common.dirs();
        let api: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dirs.api_file()).context("ferry up is not running")?,
        )?;
        let token = std::fs::read_to_string(dirs.token()).context("no control token")?;
        let base = format!("http://{}", api["api"].as_str().unwrap_or_default());
        println!("console: {}", ferry_console::login_url(&base, token.trim()));
        return Ok(());
    };
    let client = crate::cluster::client(kubeconfig).await?;
    let token = random_token()?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    println!(
        "console: {}",
        ferry_console::login_url(&format!("http://{addr}"), &token)
    );
    axum::serve(listener, ferry_operator::console::app(client, &token))
        .with_graceful_shutdown(crate::server::shutdown_signal())
        .await?;
    Ok(())
}

/// A token for this run only, from the OS's randomness.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("cannot read /dev/urandom")?,
        &mut bytes,
    )?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
