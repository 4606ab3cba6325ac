//! The request path's extension points. The router calls them at fixed phases (see
//! `proxy.rs`); the defaults ([`NoHooks`]) keep today's behaviour: a request no replica can
//! take is answered 503 at once, and answers are only counted in the router's metrics.
//! Scale-from-zero holds requests in `on_no_backend`; canary analysis reads every answer in
//! `on_response`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::StatusCode;

use crate::error::RouterError;

/// What the phases know of a request once it is classified.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub namespace: &'a str,
    /// The model it names; `None` for server-level gRPC calls (any replica answers).
    pub model: Option<&'a str>,
    pub grpc: bool,
    pub headers: &'a http::HeaderMap,
}

/// One replica's answer to one attempt (or its failure), after it was forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    pub revision: &'a str,
    pub backend: &'a str,
    /// The replica's status; `None` when it failed before answering (refused, reset,
    /// timed out), which the router retries once on another replica.
    pub status: Option<StatusCode>,
    pub elapsed: Duration,
    /// Which attempt this was (0: the first; 1: the retry).
    pub attempt: u32,
}

/// What to do with a request that found no replica to take it.
#[derive(Debug)]
pub enum NoBackend {
    /// Answer with this error (today's only answer: 503 `no ready replica`).
    Fail(RouterError),
    /// Look again in the current route table (after waiting for a replica to appear).
    Retry,
}

/// A boxed future, for hooks called off the hot path.
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Extension points of the request path.
pub trait Hooks: Send + Sync + 'static {
    /// No replica of the service can take the request (none ready, or none at all). Called
    /// at most [`MAX_HOLDS`] times per request.
    fn on_no_backend<'a>(
        &'a self,
        request: RequestInfo<'a>,
        error: RouterError,
    ) -> HookFuture<'a, NoBackend> {
        let _ = request;
        Box::pin(std::future::ready(NoBackend::Fail(error)))
    }

    /// A replica answered or failed; the router's own metrics are recorded already.
    fn on_response(&self, outcome: &Outcome<'_>) {
        let _ = outcome;
    }
}

/// How often one request may be held by [`Hooks::on_no_backend`] before it fails.
pub const MAX_HOLDS: u32 = 3;

/// Today's behaviour: no hold, nothing beyond the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl Hooks for NoHooks {}
