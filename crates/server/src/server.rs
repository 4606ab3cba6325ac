//! Starting and stopping the server: both listeners, background model loading, graceful shutdown.
//!
//! The process is live as soon as the listeners are bound; models load and warm up in the
//! background, and each becomes ready on its own. On shutdown both listeners stop accepting and
//! requests in flight are answered before [`RunningServer::wait`] returns.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tracing::{info, warn};

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::grpc::InferenceService;
use crate::metrics::Metrics;
use crate::repository::Repository;
use crate::rest::{AppState, app};

/// A started server.
pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub repo: Arc<Repository>,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    /// The Unix socket listeners; each says what failed.
    unix: Vec<JoinHandle<std::result::Result<(), String>>>,
    grpc: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

/// A Unix socket listener at `path`; a file left there by a crashed run is replaced.
fn bind_unix(path: &std::path::Path, what: &str) -> Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path).map_err(|e| {
        Error::Internal(format!(
            "cannot listen for {what} on the Unix socket {}: {e}",
            path.display()
        ))
    })
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Internal(format!("cannot listen for {what} on {addr}: {e}")))
}

/// Binds both listeners, starts serving, and loads every configured model in the background.
pub async fn start(config: ServerConfig) -> Result<RunningServer> {
    let metrics = Arc::new(Metrics::new());
    let fetcher = crate::fetch::Fetcher::new(&config.model_cache, config.model_cache_bytes);
    let repo = Arc::new(
        Repository::new(config.compute_threads, metrics, fetcher)
            .with_memory_budget(config.memory_budget),
    );
    for model in &config.models {
        repo.register(model.clone());
    }
    let http_listener = bind(config.http_addr, "HTTP").await?;
    let grpc_listener = bind(config.grpc_addr, "gRPC").await?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let (stop, stopped) = watch::channel(false);

    let router = app(AppState {
        repo: repo.clone(),
        max_body_bytes: config.max_body_bytes,
    });
    let http_listener = http_listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let service = InferenceService::new(repo.clone()).into_server(config.max_body_bytes);
    // Both sockets are bound before anything serves: a failure leaves nothing running.
    let http_unix = match &config.http_unix {
        Some(path) => Some((bind_unix(path, "HTTP")?, path.clone())),
        None => None,
    };
    let grpc_unix = match &config.grpc_unix {
        Some(path) => Some((bind_unix(path, "gRPC")?, path.clone())),
        None => None,
    };
    let mut unix = Vec::new();
    if let Some((listener, path)) = http_unix {
        let (router, mut stop) = (router.clone(), stopped.clone());
        unix.push(tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            let _ = std::fs::remove_file(&path);
            served.map_err(|e| format!("HTTP on {}: {e}", path.display()))
        }));
    }
    if let Some((listener, path)) = grpc_unix {
        let (service, mut stop) = (service.clone(), stopped.clone());
        unix.push(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            let _ = std::fs::remove_file(&path);
            served.map_err(|e| format!("gRPC on {}: {e}", path.display()))
        }));
    }
    let mut http_stop = stopped.clone();
    let http = tokio::spawn(async move {
        axum::serve(http_listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });

    let incoming = TcpListenerStream::new(grpc_listener).map(|conn| {
        conn.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    });
    let mut grpc_stop = stopped.clone();
    let grpc = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stop.wait_for(|s| *s).await;
            })
            .await
    });
    info!(http = %http_addr, grpc = %grpc_addr, http_unix = ?config.http_unix, grpc_unix = ?config.grpc_unix, models = config.models.len(), "ferry server listening");

    for model in config.models {
        let repo = repo.clone();
        tokio::spawn(async move {
            // The outcome is kept as the model's state; the log line is written by `load`.
            let _ = repo.load(&model.name, None).await;
        });
    }
    Ok(RunningServer {
        http_addr,
        grpc_addr,
        repo,
        stop,
        http,
        unix,
        grpc,
    })
}

impl RunningServer {
    /// Stops accepting connections; requests in flight still get their answers.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until every listener has stopped and in-flight requests are answered.
    pub async fn wait(self) -> Result<()> {
        // Spawned tasks: they run on their own, so awaiting one after another waits for all.
        let (http, grpc) = tokio::join!(self.http, self.grpc);
        match http {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "HTTP server stopped with an error"),
            Err(e) => warn!(error = %e, "HTTP server task failed"),
        }
        for served in self.unix {
            match served.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "a Unix socket server stopped with an error"),
                Err(e) => warn!(error = %e, "a Unix socket server task failed"),
            }
        }
        match grpc {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "gRPC server stopped with an error"),
            Err(e) => warn!(error = %e, "gRPC server task failed"),
        }
        info!("ferry server stopped");
        Ok(())
    }
}
