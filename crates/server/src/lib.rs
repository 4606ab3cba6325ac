//! Ferry's model server.
//!
//! It serves ONNX models over the Open Inference Protocol v2, on REST ([`rest`]) and gRPC
//! ([`grpc`]), with the binary tensor extension, the model repository extension and KServe v1
//! `:predict`. Both front ends decode into one [`protocol::InferRequest`] and call the one
//! [`repository::Repository`], which owns model lifecycle (load → warm-up → READY), admission
//! (429 when a model's queue is full), dynamic batching ([`batcher`]) and metrics.
//! Inference runs in a [`backend::Backend`]: tract for ONNX, optionally behind a tokenizer.
#![forbid(unsafe_code)]

pub mod backend;
pub mod batcher;
pub mod config;
pub mod error;
pub mod fetch;
pub mod footprint;
pub mod grpc;
pub mod metrics;
pub mod protocol;
pub mod repository;
pub mod rest;
pub mod server;
pub mod signature;
pub mod tensor;

pub use config::{ModelConfig, ServerConfig};
pub use error::{Error, Result};
pub use server::{RunningServer, start};
