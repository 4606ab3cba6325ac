//! Inference backends: the [`Backend`] trait and the signature a model declares.
//!
//! A backend is synchronous and thread-safe; the repository runs it off the async runtime (or
//! inline, when the model is measured to be cheap) and never holds a lock across a call.

use crate::tensor::{DataType, Tensor};

#[cfg(feature = "tract")]
pub mod tract;

#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;

#[cfg(feature = "text")]
pub mod text;

/// One tensor of a model's signature. `shape` uses -1 for a dynamic dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// Inputs and outputs of a loaded model, in the backend's order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    /// True when every input and output has a dynamic leading dimension, so requests can be
    /// stacked along it by the dynamic batcher.
    pub fn batchable(&self) -> bool {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .all(|t| t.shape.first() == Some(&-1))
    }
}

/// Why a backend call failed.
#[derive(Debug, Clone)]
pub enum BackendFailure {
    /// The input itself is unusable (e.g. text that is not UTF-8): a client error.
    BadInput(String),
    /// The model could not compute an answer.
    Failed(String),
}

/// A loaded model that can run inference.
pub trait Backend: Send + Sync + 'static {
    /// The platform name reported in model metadata (`"onnx"`, ...).
    fn platform(&self) -> &'static str;
    fn signature(&self) -> &Signature;
    /// Runs the model. `inputs` are in signature order and already validated against it.
    /// Returns every output, in signature order.
    fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendFailure>;
    /// How many calls may usefully run at once (the batcher runs at most this many batches of
    /// the model concurrently). Default: no limit of its own; the compute pool bounds it.
    fn parallelism(&self) -> usize {
        usize::MAX >> 1
    }
}
