//! Ferry's router: the gateway in front of the model-server replicas, in both modes.
//!
//! A request goes through named phases (see `proxy.rs`): classify → authorize/limit → pick
//! revision (the plan's weights) → pick replica (power of two choices on outstanding requests)
//! → forward → on error, retry once on another replica → record (metrics, `ferry-revision`
//! header). Two hooks ([`Hooks`]) step into it: `on_no_backend` and `on_response`.
//!
//! The route table arrives on a `tokio::sync::watch`: local mode's reconcile loop publishes
//! it, in a cluster `ferry router` builds it from its watches of InferenceServices and Pods
//! (`ferry_operator::routes::feed`). Both build it with `ferry_core::routes::build`.

mod access;
mod body;
mod classify;
mod error;
mod fair;
#[doc(hidden)]
pub mod fuzzing;
mod hooks;
mod limit;
pub mod metrics;
mod pool;
mod proxy;
mod serve;
mod shadow;
mod stats;
mod table;
mod tls;

pub use body::Buffered;
pub use error::RouterError;
pub use fair::FairConfig;
pub use hooks::{HookFuture, Hooks, MAX_HOLDS, NoBackend, NoHooks, Outcome, RequestInfo};
pub use proxy::Demand;
pub use proxy::{Router, RouterConfig};
pub use serve::{RunningRouter, serve, serve_threads, serve_threads_tls};
pub use stats::{Accounting, ConsoleMetrics, PATH as REVISION_METRICS_PATH, ServiceNumbers};
pub use table::InFlight;
pub use tls::{CertPair, Tls, TlsError};
