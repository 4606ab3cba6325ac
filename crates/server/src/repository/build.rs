//! Building a model: the backend for its format (tract or ONNX Runtime, optionally behind a
//! tokenizer) and the warm-up inference that must pass before it is READY.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BackendFailure, call_backend, synthetic_inputs};
use crate::backend::Backend;
use crate::config::{BackendKind, ModelConfig};
use crate::tensor::Tensor;

/// Loads the backend and runs the warm-up inference twice; returns the second run's duration.
pub(super) fn build_and_warm_up(
    config: &ModelConfig,
) -> std::result::Result<(Arc<dyn Backend>, Duration), String> {
    let engine = load_engine(config)?;
    let backend: Arc<dyn Backend> = match &config.tokenizer {
        None => Arc::from(engine),
        #[cfg(feature = "text")]
        Some(tokenizer) => Arc::new(crate::backend::text::TextBackend::new(engine, tokenizer)?),
        #[cfg(not(feature = "text"))]
        Some(_) => {
            return Err("this build has no tokenizer support (cargo feature `text`)".into());
        }
    };
    let warm_up = synthetic_inputs(backend.signature());
    let check = |result: std::result::Result<Vec<Tensor>, BackendFailure>| match result {
        Ok(outputs) if outputs.len() == backend.signature().outputs.len() => Ok(()),
        Ok(outputs) => Err(format!(
            "warm-up inference returned {} outputs, the signature has {}",
            outputs.len(),
            backend.signature().outputs.len()
        )),
        Err(BackendFailure::BadInput(e) | BackendFailure::Failed(e)) => {
            Err(format!("warm-up inference failed: {e}"))
        }
    };
    check(call_backend(backend.as_ref(), warm_up.clone()))?;
    let started = Instant::now();
    check(call_backend(backend.as_ref(), warm_up))?;
    Ok((backend, started.elapsed()))
}

/// The engine for the model's graph, as `backend=` chose (a build may leave one out).
fn load_engine(config: &ModelConfig) -> std::result::Result<Box<dyn Backend>, String> {
    match config.backend {
        #[cfg(feature = "tract")]
        BackendKind::Tract => Ok(Box::new(crate::backend::tract::TractBackend::load(
            &config.path,
        )?)),
        #[cfg(not(feature = "tract"))]
        BackendKind::Tract => Err("this build has no tract backend (cargo feature `tract`)".into()),
        #[cfg(feature = "onnxruntime")]
        BackendKind::OnnxRuntime => Ok(Box::new(crate::backend::onnxruntime::OrtBackend::load(
            &config.path,
        )?)),
        #[cfg(not(feature = "onnxruntime"))]
        BackendKind::OnnxRuntime => {
            Err("this build has no ONNX Runtime backend (cargo feature `onnxruntime`)".into())
        }
    }
}
