//! The `ferry` binary's integration tests, one binary (one link): local mode end to end (canary rollouts too), the
//! OCI image, `ferry fetch`, and the real tritonclient suite against this very build.

mod argocd;
mod autoscale;
mod canary;
mod console;
mod dashboard;
mod doctor;
mod experiment;
mod fairness;
mod fetch;
mod gitops;
mod image;
mod interop;
mod kserve_shapes;
mod local;
mod pooled;
mod pools;
mod quota;
mod shadow;
mod stack;
mod storage;
mod tenancy;
mod tls;
mod trace;
