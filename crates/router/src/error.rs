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
    /// A service at zero replicas holds this many requests already.
    #[error(
        "cold start of {service} in namespace {namespace}: {held} requests already held (coldStartBuffer.requests); try again shortly"
    )]
    ColdStartBufferFull {
        namespace: String,
        service: String,
        held: u64,
    },
    /// The request was held for a replica that did not become ready in time.
    #[error(
        "cold start of {service} in namespace {namespace}: no replica ready after {seconds}s (coldStartBuffer.timeoutSeconds)"
    )]
    ColdStartTimeout {
        namespace: String,
        service: String,
        seconds: u32,
    },
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
            RouterError::NoReadyReplica { .. }
            | RouterError::ColdStartBufferFull { .. }
            | RouterError::ColdStartTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
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
            RouterError::NoReadyReplica { .. }
            | RouterError::ColdStartBufferFull { .. }
            | RouterError::ColdStartTimeout { .. }
            | RouterError::Upstream { .. } => 14, // UNAVAILABLE
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
            RouterError::ColdStartBufferFull { .. } => "cold_start_buffer_full",
            RouterError::ColdStartTimeout { .. } => "cold_start_timeout",
            RouterError::Upstream { .. } => "upstream",
        }
    }

    /// Seconds a client should wait before trying again (`Retry-After`), for the answers
    /// that say "later".
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            RouterError::ColdStartBufferFull { .. } | RouterError::ColdStartTimeout { .. } => {
                Some(5)
            }
            RouterError::NoReadyReplica { .. } => Some(1),
            _ => None,
        }
    }
}
