//! The API crate's integration tests, one binary: manifests parsed and validated as users
//! write them, and the committed CRDs against the types.

mod crds;
mod manifests;
