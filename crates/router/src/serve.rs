//! Serving a [`Router`]: on one listener of the current runtime ([`serve`]), or on a thread
//! per core, each its own `SO_REUSEPORT` listener and runtime ([`serve_threads`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::Router;

/// A running router; stop with [`RunningRouter::shutdown`].
pub struct RunningRouter {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl RunningRouter {
    /// Stop accepting, let open requests finish (up to `grace`), return.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for done in self.done {
            let _ = tokio::time::timeout_at(deadline, done).await;
        }
    }
}

/// Serve `router` on `listener` (HTTP/1.1 and h2c on one port) on the current runtime.
pub fn serve(listener: TcpListener, router: Router) -> std::io::Result<RunningRouter> {
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        accept_loop(listener, router, stop_rx, None).await;
        let _ = done_tx.send(());
    });
    Ok(RunningRouter {
        addr,
        stop,
        done: vec![done],
    })
}

/// Serve `router` on `addr` with its `worker_threads` OS threads (the count its connection pools
/// are made for), each a single-threaded runtime with its own `SO_REUSEPORT` listener (the
/// kernel spreads connections): a connection, its upstream connections and its requests stay
/// on one thread, as in nginx's worker model.
pub fn serve_threads(addr: SocketAddr, router: Router) -> std::io::Result<RunningRouter> {
    serve_threads_tls(addr, router, None)
}

/// As [`serve_threads`], over TLS when `tls` is given (HTTP/2 or HTTP/1.1 by ALPN).
pub fn serve_threads_tls(
    addr: SocketAddr,
    router: Router,
    tls: Option<crate::Tls>,
) -> std::io::Result<RunningRouter> {
    let threads = router.worker_threads().max(1);
    // A socket bound to `at`; with SO_REUSEPORT for the threads' listeners.
    let socket = |at: SocketAddr, reuse_port: bool| -> std::io::Result<tokio::net::TcpSocket> {
        let socket = if at.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(reuse_port)?;
        socket.set_nodelay(true)?;
        socket.bind(at)?;
        Ok(socket)
    };
    if addr.port() != 0 {
        // SO_REUSEPORT would let these sockets share a port another router of the same user
        // already listens on (two daemons splitting traffic, silently): a plain bind fails then.
        drop(socket(addr, false)?);
    }
    let first = socket(addr, true)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads {
        sockets.push(socket(bound, true)?);
    }
    let (stop, stop_rx) = watch::channel(false);
    let mut done = Vec::new();
    // Listening before any thread starts: a failure leaves nothing running, and the port is
    // taken (for the check above) once this returns.
    let mut listening = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            socket.listen(4096)?
        };
        listening.push((runtime, listener));
    }
    for (index, (runtime, listener)) in listening.into_iter().enumerate() {
        let router = router.clone();
        let stop_rx = stop_rx.clone();
        let tls = tls.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        done.push(done_rx);
        std::thread::Builder::new()
            .name(format!("ferry-router-{index}"))
            .spawn(move || {
                crate::pool::set_worker(index);
                runtime.block_on(accept_loop(listener, router, stop_rx, tls));
                let _ = done_tx.send(());
            })?;
    }
    Ok(RunningRouter {
        addr: bound,
        stop,
        done,
    })
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
    tls: Option<crate::Tls>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let config = router.config();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let service = hyper::service::service_fn(move |request| {
                    let router = router.clone();
                    async move { Ok::<_, Infallible>(router.handle(request).await) }
                });
                match &tls {
                    None => {
                        let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                        let connection = graceful.watch(connection);
                        tokio::spawn(async move {
                            let _ = connection.await;
                        });
                    }
                    Some(tls) => {
                        let acceptor = tls.acceptor.clone();
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(error = %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                            let _ = watcher.watch(connection).await;
                        });
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
