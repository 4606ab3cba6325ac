//! The router's one error type: who failed, and the one mapping to HTTP status / gRPC code.

use http::StatusCode;

/// Why the router answered instead of a replica.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The request does not name a model the router can route.
    #[error("{0}")]
    BadRequest(String),
    #[error("model {model:?} not found in namespace {namespace:?}")]
    ModelNotFound { namespace: String, model: String },
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error(
        "revision {revision:?} (header ferry-revision) of {service} in namespace {namespace} takes no requests: no such revision, or none of its replicas is ready"
    )]
    RevisionNotServing {
        namespace: String,
        service: String,
        revision: String,
    },
    #[error(
        "variant {variant:?} (header ferry-variant) of {service} in namespace {namespace} takes no requests: no such variant, or none of its replicas is ready"
    )]
    VariantNotServing {
        namespace: String,
        service: String,
        variant: String,
    },
    /// Feedback names a request this service did not answer.
    #[error("{0}")]
    UnknownRequest(String),
    #[error("no ready replica of {service} in namespace {namespace}")]
    NoReadyReplica { namespace: String, service: String },
    /// The replica failed (twice, when a retry was possible).
    #[error("upstream replica {backend} failed: {cause}")]
    Upstream { backend: String, cause: String },
}

impl RouterError {
    pub fn http_status(&self) -> StatusCode {
        match self {
            RouterError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RouterError::ModelNotFound { .. }
            | RouterError::NoRoute(_)
            | RouterError::RevisionNotServing { .. }
            | RouterError::VariantNotServing { .. }
            | RouterError::UnknownRequest(_) => StatusCode::NOT_FOUND,
            RouterError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RouterError::NoReadyReplica { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RouterError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// gRPC status code (as the number carried in `grpc-status`).
    pub fn grpc_code(&self) -> u32 {
        match self {
            RouterError::BadRequest(_) => 3, // INVALID_ARGUMENT
            RouterError::ModelNotFound { .. }
            | RouterError::NoRoute(_)
            | RouterError::RevisionNotServing { .. }
            | RouterError::VariantNotServing { .. }
            | RouterError::UnknownRequest(_) => 5, // NOT_FOUND
            RouterError::TooLarge { .. } => 11, // OUT_OF_RANGE
            RouterError::NoReadyReplica { .. } | RouterError::Upstream { .. } => 14, // UNAVAILABLE
        }
    }

    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            RouterError::BadRequest(_) => "bad_request",
            RouterError::ModelNotFound { .. } => "model_not_found",
            RouterError::NoRoute(_) => "no_route",
            RouterError::RevisionNotServing { .. } => "revision_not_serving",
            RouterError::VariantNotServing { .. } => "variant_not_serving",
            RouterError::UnknownRequest(_) => "unknown_request",
            RouterError::TooLarge { .. } => "too_large",
            RouterError::NoReadyReplica { .. } => "no_ready_replica",
            RouterError::Upstream { .. } => "upstream",
        }
    }
}
