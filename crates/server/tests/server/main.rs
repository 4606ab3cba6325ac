//! The model server's integration tests, one binary (one link): real servers on loopback
//! sockets, real REST and gRPC clients.

mod common;

mod behaviour;
mod conformance;
mod datatypes;
mod fetch;
mod onnxruntime;
mod refusals;
mod text;
