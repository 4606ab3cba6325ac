//! The protocol-neutral inference request and response that REST and gRPC both decode into.

use crate::tensor::Tensor;

/// Request or response parameters (OIP `parameters`), kept as JSON values.
pub type Parameters = serde_json::Map<String, serde_json::Value>;

/// An output the client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// REST binary extension: `parameters.binary_data` of this output, if given.
    pub binary: Option<bool>,
}

/// One inference request, already decoded from its wire format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub parameters: Option<Parameters>,
    pub inputs: Vec<Tensor>,
    /// Empty means "every output".
    pub outputs: Vec<RequestedOutput>,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub parameters: Option<Parameters>,
    pub outputs: Vec<Tensor>,
}

/// Which front end a request came through (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Rest,
    Grpc,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::Grpc => "grpc",
        }
    }
}
