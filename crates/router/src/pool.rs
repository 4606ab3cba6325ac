//! Connections to one replica: a stack of idle HTTP/1.1 connections (REST) and one shared
//! HTTP/2 connection (gRPC), each made with hyper's connection-level client. Requests are sent
//! in origin form; no URI is parsed and no pool key hashed per request. Both go over the
//! replica's Unix sockets when it has them (local mode): the same bytes, without the TCP stack.

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
use tokio_util::either::Either;

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

type Http1 = http1::SendRequest<Full<Bytes>>;

/// A connection to a replica: its Unix socket, or TCP.
type Stream = TokioIo<Either<tokio::net::UnixStream, tokio::net::TcpStream>>;

/// Connect to the replica: on its Unix socket `unix` when given, else (or when the socket
/// refuses: its file removed, a temporary directory cleaned; the replica serves the same on
/// TCP, so that costs speed, not requests) to `addr`. Returns the stream and what it reaches.
async fn connect(
    addr: SocketAddr,
    unix: Option<&Path>,
    timeout: Duration,
) -> Result<(Stream, String), SendError> {
    if let Some(path) = unix {
        match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path)).await {
            Ok(Ok(stream)) => {
                return Ok((
                    TokioIo::new(Either::Left(stream)),
                    path.display().to_string(),
                ));
            }
            Ok(Err(e)) => {
                tracing::debug!(socket = %path.display(), error = %e, "Unix socket refused: TCP instead")
            }
            Err(_) => {
                tracing::debug!(socket = %path.display(), "Unix socket timed out: TCP instead")
            }
        }
    }
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| SendError(format!("connect to {addr} timed out")))?
        .map_err(|e| SendError(format!("connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok((TokioIo::new(Either::Right(stream)), addr.to_string()))
}

/// A new HTTP/1.1 connection, its connection task spawned.
async fn connect_http1(
    addr: SocketAddr,
    unix: Option<&Path>,
    timeout: Duration,
) -> Result<Http1, SendError> {
    let (io, to) = connect(addr, unix, timeout).await?;
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|e| SendError(format!("handshake with {to}: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
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

    /// Send an HTTP/2 request (gRPC) on the backend's shared connection (made as for HTTP/1.1).
    pub async fn send_http2(
        &self,
        addr: SocketAddr,
        unix: Option<&Path>,
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
                let (io, to) = connect(addr, unix, timeout).await?;
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| SendError(format!("HTTP/2 handshake with {to}: {e}")))?;
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
