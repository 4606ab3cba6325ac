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

//!
//! Besides: the stable Service `<name>` (the status URL), a HorizontalPodAutoscaler, an Ingress
//! or a Gateway API HTTPRoute when the spec asks (the HTTPRoute only where the cluster serves
//! that API, else the IngressReady condition says it is missing); Kubernetes Events for every
//! decision (`kube::runtime::events`); leader election with a Lease ([`lease`]), so several
//! replicas can run and one reconciles.

pub mod lease;
mod owned;
pub mod probes;
mod reconcile;
pub mod routes;

pub use kube::runtime::events::Reporter;
pub use reconcile::{APPLIED_HASH, Context, Error, FIELD_MANAGER, run};
