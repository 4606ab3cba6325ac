//! Connections to one replica: a stack of idle HTTP/1.1 connections (REST) and one shared
//! HTTP/2 connection (gRPC), each made with hyper's connection-level client. Requests are sent
//! in origin form; no URI is parsed and no pool key hashed per request. REST goes over the
//! replica's Unix socket when it has one (local mode): the same bytes, without the TCP stack.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Mark the calling thread as router thread `index` (selects its connection pools).
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// Index of the calling router thread (0 outside router threads).
pub fn worker() -> usize {
    WORKER.with(std::cell::Cell::get)
}

/// Why a request could not be exchanged with the replica.
#[derive(Debug)]
pub struct SendError(pub String);

/// Connections to one backend.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Http1>>,
    shared_h2: Mutex<Option<http2::SendRequest<Full<Bytes>>>>,
}

/// An HTTP/1.1 connection checked out of the pool; give it back with [`Pool::release`].
pub struct Lease(Http1);

/// Idle connections kept per backend.
const MAX_IDLE: usize = 256;

/// An HTTP/1.1 connection over `io`, its connection task spawned.
async fn handshake<T>(io: T, to: String) -> Result<Http1, SendError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|e| SendError(format!("handshake with {to}: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

type Http1 = http1::SendRequest<Full<Bytes>>;

async fn connect_http1(
    addr: SocketAddr,
    unix: Option<&Path>,
    timeout: Duration,
) -> Result<Http1, SendError> {
    if let Some(path) = unix {
        match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path)).await {
            Ok(Ok(stream)) => {
                return handshake(TokioIo::new(stream), path.display().to_string()).await;
            }
            // The replica serves the same on TCP: a socket file gone (removed by hand, a
            // cleaned temporary directory) costs speed, not requests.
            Ok(Err(e)) => {
                tracing::debug!(socket = %path.display(), error = %e, "Unix socket refused: TCP instead")
            }
            Err(_) => {
                tracing::debug!(socket = %path.display(), "Unix socket timed out: TCP instead")
            }
        }
    }
    handshake(connect(addr, timeout).await?, addr.to_string()).await
}

async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TokioIo<tokio::net::TcpStream>, SendError> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| SendError(format!("connect to {addr} timed out")))?
        .map_err(|e| SendError(format!("connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

impl Pool {
    /// Send an HTTP/1.1 request: on an idle connection when one is alive, else on a new one
    /// (to `unix` when given, else to `addr`). A reused connection that turns out closed (the
    /// replica dropped it while idle) is replaced by a new connection once, as it never
    /// carried the request.
    pub async fn send_http1(
        &self,
        addr: SocketAddr,
        unix: Option<&Path>,
        timeout: Duration,
        request: impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.send_request(request()).await {
                Ok(response) => return Ok((response, Lease(sender))),
                Err(e) if e.is_canceled() || e.is_closed() => continue,
                Err(e) => return Err(SendError(error_chain(&e))),
            }
        }
        let mut sender = connect_http1(addr, unix, timeout).await?;
        let response = sender
            .send_request(request())
            .await
            .map_err(|e| SendError(error_chain(&e)))?;
        Ok((response, Lease(sender)))
    }

    fn take_idle(&self) -> Option<Http1> {
        self.idle.lock().expect("pool poisoned").pop()
    }

    /// Return a connection whose response was read to the end.
    pub fn release(&self, lease: Lease) {
        if lease.0.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool poisoned");
        if idle.len() < MAX_IDLE {
            idle.push(lease.0);
        }
    }

    /// Send an HTTP/2 request (gRPC) on the backend's shared connection.
    pub async fn send_http2(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, SendError> {
        let existing = self
            .shared_h2
            .lock()
            .expect("pool poisoned")
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned();
        let mut sender = match existing {
            Some(sender) => sender,
            None => {
                let io = connect(addr, timeout).await?;
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| SendError(format!("HTTP/2 handshake with {addr}: {e}")))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                *self.shared_h2.lock().expect("pool poisoned") = Some(sender.clone());
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| SendError(error_chain(&e)))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| SendError(error_chain(&e)))
    }
}

pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
