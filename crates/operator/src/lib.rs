//! Ferry's cluster mode: a kube-rs controller (the controller-rs pattern: `reconcile`,
//! `error_policy`, a shared `Context`) that turns each InferenceService into one Deployment and
//! one Service per live revision, with the shared core deciding everything. Each reconcile:
//! - observes (`observe.rs`): the caches' Deployments (replica counts per revision) and Pods
//!   (Ready condition, container states, deletionTimestamp) as `ferry_core` replica views;
//! - plans: `ferry_core::service::plan`, the decision local mode makes too — replicas per
//!   revision, retirements, the status and the events;
//! - applies (`writes.rs` translates the plan into object writes, `apply.rs` sends them):
//!   each revision's Deployment from `ferry_render::render`, replica counts, deletions;
//! - writes the status (`status.rs`) to the status subresource, with the transition's event.
//!
//! Everything is server-side applied under one field manager; owner references make deletion
//! cascade. Level-triggered: every event and a periodic requeue re-derive the whole state.

//!
//! Besides: the stable Service `<name>` (the status URL), a HorizontalPodAutoscaler, an Ingress
//! or a Gateway API HTTPRoute when the spec asks (the HTTPRoute only where the cluster serves
//! that API, else the IngressReady condition says it is missing); Kubernetes Events for every
//! decision (`kube::runtime::events`); leader election with a Lease ([`lease`]), so several
//! replicas can run and one reconciles. While a canary is in progress, [`collect`] gathers the
//! router pods' per-revision numbers for its analysis.

mod apply;
pub mod collect;
pub mod console;
mod controller;
pub mod demand;
pub mod external_metrics;
pub mod lease;
mod observe;
mod owned;
mod pooled;
mod pools;
pub mod probes;
mod reconcile;
pub mod routes;
mod status;
mod writes;

pub use controller::{APPLIED_HASH, Context, Error, FIELD_MANAGER, run};
pub use kube::runtime::events::Reporter;
