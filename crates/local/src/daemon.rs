//! `ferry up`: one process holding the state, the router, the control API, the supervisor and
//! the reconcile loop. Start-up adopts what a crashed run left behind; shutdown drains and
//! stops every replica.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::routes::RouteTable;
use ferry_router::{Router, RouterConfig};
use tokio::sync::{Notify, watch};

use crate::api::{ApiState, app};
use crate::paths::{StateDir, write_private};
use crate::process;
use crate::reconcile::Reconciler;
use crate::store::Store;
use crate::supervisor::{Supervisor, SupervisorConfig};
use crate::{Error, Result};

/// Settings of `ferry up`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub router_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// The program replicas run (`ferry`, with the `server` subcommand).
    pub program: PathBuf,
    pub supervisor: SupervisorConfig,
    /// TLS at the router: certificate / key pairs, the first the default (empty: plain HTTP).
    pub tls: Vec<ferry_router::CertPair>,
    /// With TLS, plain HTTP too on this address (only when asked).
    pub plain_router_addr: Option<SocketAddr>,
    /// Fair sharing of the router's in-flight slots among namespaces (`None`: first come,
    /// first served). Every local replica runs on this machine, so its cores are the slots by
    /// default.
    pub fair: Option<ferry_router::FairConfig>,
}

/// Run until `shutdown` completes, then drain and stop everything.
pub async fn run(config: DaemonConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let dirs = StateDir::new(&config.state_dir);
    dirs.create()?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dirs.lock())
        .map_err(|e| Error::io("cannot open the daemon lock", e))?;
    if lock.try_lock().is_err() {
        return Err(Error::Conflict(format!(
            "another `ferry up` is running with state directory {}",
            dirs.root.display()
        )));
    }
    // A crashed run may have left its api.json: clients must not find a dead address.
    let _ = std::fs::remove_file(dirs.api_file());
    let store = Arc::new(Store::open(&dirs.db())?);
    let token: Arc<str> = Arc::from(dirs.ensure_token()?);

    let (routes_tx, routes_rx) = watch::channel(Arc::new(RouteTable::default()));
    // While namespaces have API keys, the router's own numbers need the control token.
    let router = Router::new(
        routes_rx,
        RouterConfig {
            admin_token: Some(token.to_string()),
            fair: config.fair,
            ..RouterConfig::default()
        },
    );
    let keys = Arc::new(crate::apikeys::KeyRing::new(&store, routes_tx)?);
    // Thread per core, each with its own SO_REUSEPORT listener and upstream connections (the
    // request path never crosses threads), like `ferry router` in a cluster.
    let tls = ferry_router::Tls::for_pairs(config.tls.clone())
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let secure = tls.is_some();
    let running_router = ferry_router::serve_threads_tls(config.router_addr, router.clone(), tls)
        .map_err(|e| {
        Error::io(
            format!(
                "cannot listen for the router on {} (--router-addr)",
                config.router_addr
            ),
            e,
        )
    })?;
    let router_addr = running_router.addr;
    let plain_router = match config.plain_router_addr {
        Some(addr) if secure => Some(ferry_router::serve_threads(addr, router.clone()).map_err(
            |e| {
                Error::io(
                    format!("cannot listen for plain HTTP on {addr} (--router-plain-addr)"),
                    e,
                )
            },
        )?),
        _ => None,
    };

    let changed = Arc::new(Notify::new());
    // A request held for a service at zero wakes the reconcile loop at once.
    {
        let changed = changed.clone();
        router.on_demand(Arc::new(move |_, _| changed.notify_one()));
    }
    let supervisor = Supervisor::new(
        store.clone(),
        dirs.clone(),
        config.program.clone(),
        router.in_flight(),
        changed.clone(),
        config.supervisor.clone(),
    );
    // Replicas the store knows and that still run are adopted by the first reconcile; any
    // other replica process of this state directory is a leftover of a crash: kill it.
    let owned: HashSet<i32> = store
        .replicas()?
        .iter()
        .filter_map(|r| Some((r.pid?, r.start_time?)))
        .filter(|(pid, start)| process::alive(*pid, *start))
        .map(|(pid, _)| pid)
        .collect();
    let killed = supervisor.kill_leftovers(&owned);
    if !owned.is_empty() || killed > 0 {
        tracing::info!(
            adopting = owned.len(),
            killed_leftovers = killed,
            "recovering from the previous run"
        );
    }

    let api_listener = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|e| {
            Error::io(
                format!("cannot listen for the control API on {}", config.api_addr),
                e,
            )
        })?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| Error::io("API address", e))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let token_for_console = token.to_string();
    let api = app(ApiState {
        store: store.clone(),
        supervisor: supervisor.clone(),
        dirs: dirs.clone(),
        token,
        user: Arc::from(token_holder()),
        changed: changed.clone(),
        keys: keys.clone(),
        router: router.clone(),
    });
    let mut api_stop = stop_rx.clone();
    let api_task = tokio::spawn(async move {
        let _ = axum::serve(api_listener, api)
            .with_graceful_shutdown(async move {
                let _ = api_stop.wait_for(|s| *s).await;
            })
            .await;
    });
    write_private(
        &dirs.api_file(),
        &serde_json::json!({
            "api": api_addr.to_string(),
            "router": router_addr.to_string(),
            "routerTls": secure,
            "routerPlain": plain_router.as_ref().map(|r| r.addr.to_string()),
            "pid": std::process::id(),
            "console": format!("http://{api_addr}{}", ferry_console::PATH),
        })
        .to_string(),
    )?;

    let reconciler = Reconciler {
        store: store.clone(),
        supervisor: supervisor.clone(),
        keys,
        changed,
        router_addr,
        tls: secure,
        accounting: router.accounting(),
        windows: Default::default(),
        stalls: Default::default(),
        autoscalers: Default::default(),
        pools: Default::default(),
        pool_servers: ferry_api::repository::Client::default(),
    };
    let reconcile_stop = stop_rx.clone();
    let reconcile_task = tokio::spawn(async move { reconciler.run(reconcile_stop).await });
    tracing::info!(router = %router_addr, api = %api_addr, state_dir = %dirs.root.display(), "ferry up: ready");
    // The console's link carries the token in its fragment: the user's own terminal, as the
    // token file is the user's own.
    eprintln!(
        "console: {}",
        ferry_console::login_url(&format!("http://{api_addr}"), &token_for_console)
    );

    shutdown.await;
    tracing::info!("shutting down: draining the router, then stopping every replica");
    let _ = stop_tx.send(true);
    let _ = reconcile_task.await;
    running_router.shutdown(Duration::from_secs(10)).await;
    if let Some(plain) = plain_router {
        plain.shutdown(Duration::from_secs(10)).await;
    }
    supervisor.stop_all().await;
    let _ = api_task.await;
    let _ = std::fs::remove_file(dirs.api_file());
    drop(lock);
    tracing::info!("stopped");
    Ok(())
}

/// Who holds the control token: the user that started `ferry up` (the token file is theirs,
/// mode 0600). `FERRY_USER` names someone else (a shared service account's owner, say).
fn token_holder() -> String {
    ["FERRY_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "local-admin".into())
}
