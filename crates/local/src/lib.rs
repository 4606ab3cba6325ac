//! Ferry's local mode: `ferry up` runs InferenceServices on one machine, no Kubernetes.
//!
//! - [`store`]: SQLite (WAL) holds everything that must survive a crash: desired specs,
//!   revisions, replicas (pid + start time, addresses), events. State is written before it acts.
//! - [`supervisor`]: one task per replica runs `ferry server` as a child process in its own process
//!   group, probes readiness (OIP model-ready) and liveness, restarts with exponential back-off,
//!   drains (out of the route table, in-flight requests finish, SIGTERM, SIGKILL after a grace).
//!   After a crash of the daemon it adopts live replicas by pid + start time and kills leftovers.
//! - [`reconcile`]: level-triggered loop: for each service, `ferry_core::service::plan` on what
//!   the supervisor observes (the decision the operator makes too), persisted, then carried out:
//!   replicas started and stopped, the route table (`ferry_core::routes::build` with the plan's
//!   weights) published to the router, status and events written.
//! - [`pools`]: ServerPools: `ferry server --memory-budget` processes under the supervisor,
//!   models registered on them where `ferry_core::pool::decide` places them, their copies the
//!   pooled services' endpoints.
//! - [`api`]: the control API on loopback (bearer token from the state dir); [`client`] calls it,
//!   both with the typed messages of [`wire`].
//! - [`daemon`]: wires the above with the router (`ferry_router`) into `ferry up`.

pub mod api;
pub mod apikeys;
pub mod client;
pub mod daemon;
pub mod error;
pub mod paths;
pub mod pools;
pub mod process;
pub mod quotas;
pub mod reconcile;
pub mod store;
pub mod supervisor;
pub mod wire;

pub use error::{Error, Result};
