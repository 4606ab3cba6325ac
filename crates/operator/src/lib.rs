//! Ferry's cluster mode: a kube-rs controller (the controller-rs pattern: `reconcile`,
//! `error_policy`, a shared `Context`) that turns each InferenceService into one Deployment and
//! one Service per live revision, with the shared core deciding everything:
//! - what each revision's Deployment looks like: `ferry_core::render::render`;
//! - how many replicas each revision has during a rollout: `ferry_core::rollout::plan` over the
//!   revision's Pods (Ready condition, deletionTimestamp), translated to Deployment replica counts;
//! - the status: `ferry_core::status::derive`, written to the status subresource.
//!
//! Everything is server-side applied under one field manager; owner references make deletion
//! cascade. Level-triggered: every event and a periodic requeue re-derive the whole state.

pub mod probes;
mod reconcile;
pub mod routes;

pub use reconcile::{Context, Error, FIELD_MANAGER, run};
