//! Ferry's router: the gateway in front of the model-server replicas, in both modes.
//!
//! A request goes through fixed phases (see `proxy.rs`): classify (REST path or gRPC message →
//! model name; `ferry-namespace` header or `NAME.NAMESPACE.*` host → namespace) → route (the
//! current table from a `tokio::sync::watch`) → pick (weighted revision, then power of two
//! choices on outstanding requests) → forward (retry once on another replica when the replica
//! failed before answering) → record (metrics, `ferry-revision` header).
//!
//! Local mode feeds the table from its supervisor; cluster mode from a Pod watcher. Both build it
//! with `ferry_core::routes::build`.

mod error;
mod metrics;
mod pool;
mod proxy;
mod table;
mod target;

pub use error::RouterError;
pub use proxy::{Router, RouterConfig, RunningRouter, serve, serve_threads};
pub use table::InFlight;
