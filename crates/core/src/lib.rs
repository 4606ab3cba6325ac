//! Ferry's shared core: pure decisions, no I/O and no clock (time is an argument).
//!
//! Local mode (`ferry up`) and cluster mode (`ferry operator`) observe their replicas, hand
//! what they saw to these functions, and carry out the answer:
//! - [`service::plan`]: the whole-service decision — replicas per revision, replicas to start
//!   and stop, revisions to retire, traffic weights, the status and the events, in one
//!   vocabulary ([`reason::Reason`]); built on
//! - [`rollout::plan`]: which replicas of which revision to start or stop next, honouring
//!   `maxSurge` / `maxUnavailable` (the Deployment controller's rules), and
//! - [`progressive::decide`]: a canary rollout's next step, weights and analysis verdict
//!   ([`analysis::judge`] on the router's numbers), rolled back on failure;
//! - [`status::derive`]: the InferenceService status with conditions that name the reason;
//! - [`routes::build`]: the route table the router reads (services → weighted revisions →
//!   ready backends);
//! - [`runtime::resolve`]: which server runs a model (Ferry's own or a ServingRuntime), and
//!   [`runtime::server_args`]: how Ferry's own server is started for a model, in both modes;
//! - [`fairness::admits`]: whether a namespace may send one more request while tenants share
//!   the slots (the router's noisy-neighbour rule);
//! - [`placement::plan`]: which servers of a pool hold copies of which models, by footprint,
//!   and [`pool::decide`]: a ServerPool's whole decision on it (servers, registrations,
//!   estimates, the pool's and its services' status).
//!
//! The Kubernetes objects themselves are rendered by `ferry-render` (cluster mode only).

pub mod analysis;
pub mod autoscale;
pub mod experiment;
pub mod fairness;
pub mod observe;
pub mod placement;
pub mod pool;
pub mod progressive;
pub mod quota;
pub mod reason;
pub mod rollout;
pub mod routes;
pub mod runtime;
pub mod service;
pub mod status;

pub use observe::{ReplicaHealth, ReplicaView};

#[cfg(test)]
pub(crate) use ferry_api::testing;
