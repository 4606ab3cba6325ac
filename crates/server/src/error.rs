//! The server's one error type, and the one place where it becomes an HTTP status or a gRPC code.

use http::StatusCode;

/// Everything that can go wrong while serving a request or managing a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: a bad shape, datatype, element count, JSON, or a missing input.
    #[error("{0}")]
    InvalidInput(String),
    #[error("model '{model}' not found")]
    ModelNotFound { model: String },
    #[error("model '{model}' has no version '{version}'")]
    VersionNotFound { model: String, version: String },
    #[error("model '{model}' is not ready: {reason}")]
    NotReady { model: String, reason: String },
    #[error("model '{model}' is at capacity ({capacity} requests queued); retry later")]
    Overloaded { model: String, capacity: usize },
    #[error("request body exceeds the limit of {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    /// The model accepted the input but its inference failed.
    #[error("inference of model '{model}' failed: {message}")]
    InferenceFailed { model: String, message: String },
    #[error("model '{model}' failed to load: {message}")]
    LoadFailed { model: String, message: String },
    /// A model that can never be resident on this server: its footprint exceeds the budget.
    #[error(
        "model '{model}' needs {need} bytes of memory, more than this server's memory budget of {budget} bytes"
    )]
    TooLarge {
        model: String,
        need: u64,
        budget: u64,
    },
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

/// `Result` with the server's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// A short stable name, used as a metric label and in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::VersionNotFound { .. } => "version_not_found",
            Self::NotReady { .. } => "not_ready",
            Self::Overloaded { .. } => "overloaded",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::InferenceFailed { .. } => "inference_failed",
            Self::LoadFailed { .. } => "load_failed",
            Self::TooLarge { .. } => "too_large",
            Self::ShuttingDown => "shutting_down",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status for the REST front end.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Self::ModelNotFound { .. } | Self::VersionNotFound { .. } => StatusCode::NOT_FOUND,
            Self::NotReady { .. } | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooLarge { .. } => StatusCode::CONFLICT,
            Self::InferenceFailed { .. } | Self::LoadFailed { .. } | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The gRPC status code for the gRPC front end.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::InvalidInput(_) => tonic::Code::InvalidArgument,
            Self::ModelNotFound { .. } | Self::VersionNotFound { .. } => tonic::Code::NotFound,
            Self::NotReady { .. } | Self::ShuttingDown => tonic::Code::Unavailable,
            Self::Overloaded { .. } => tonic::Code::ResourceExhausted,
            Self::PayloadTooLarge { .. } => tonic::Code::ResourceExhausted,
            Self::TooLarge { .. } => tonic::Code::FailedPrecondition,
            Self::InferenceFailed { .. } | Self::LoadFailed { .. } | Self::Internal(_) => {
                tonic::Code::Internal
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}
