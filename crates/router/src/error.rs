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
    #[error("request path and query longer than {limit} bytes")]
    UriTooLong { limit: usize },
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
    /// The namespace takes only requests with one of its API keys.
    #[error("namespace {namespace:?} requires an API key: {failure}")]
    Unauthenticated {
        namespace: String,
        failure: AuthFailure,
    },
    /// A valid key, of another namespace.
    #[error("API key {id} is not a key of namespace {namespace:?}")]
    Forbidden { namespace: String, id: String },
    /// The router's own numbers name every tenant's services: not for API keys.
    #[error("the router's metrics need the router's admin token while namespaces have API keys")]
    AdminOnly,
    /// A bucket (the key's, the service's) is empty.
    #[error("rate limit of {what} ({limit}) exceeded; retry after {retry_after}s")]
    RateLimited {
        what: String,
        limit: String,
        per_second: u64,
        retry_after: u32,
        reset: u32,
    },
    /// The namespace is at its fair share of the shared slots and its queue is full, or its
    /// request waited too long for a turn.
    #[error(
        "namespace {namespace:?} is at its fair share of the shared slots: {reason}; retry after 1s"
    )]
    Overloaded { namespace: String, reason: String },
    /// The replica failed (twice, when a retry was possible).
    #[error("upstream replica {backend} failed: {cause}")]
    Upstream { backend: String, cause: String },
}

/// Why a request to a namespace with API keys was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    /// Unknown, forged or revoked.
    Invalid,
    Expired,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthFailure::Missing => {
                "none given (send it as `Authorization: Bearer KEY` or `x-api-key: KEY`)"
            }
            AuthFailure::Invalid => "the key given is not valid (unknown or revoked)",
            AuthFailure::Expired => "the key given has expired",
        })
    }
}

impl RouterError {
    /// Headers the answer carries besides its status: `WWW-Authenticate` on a 401, the
    /// `RateLimit-*` fields on a 429 (`Retry-After` comes from [`RouterError::retry_after`]).
    pub fn headers(&self, headers: &mut http::HeaderMap) {
        use http::HeaderValue;
        match self {
            RouterError::Unauthenticated { failure, .. } => {
                let value = match failure {
                    AuthFailure::Missing => r#"Bearer realm="ferry""#,
                    AuthFailure::Invalid => r#"Bearer realm="ferry", error="invalid_token""#,
                    AuthFailure::Expired => {
                        r#"Bearer realm="ferry", error="invalid_token", error_description="expired""#
                    }
                };
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(value),
                );
            }
            RouterError::RateLimited {
                per_second, reset, ..
            } => {
                headers.insert("ratelimit-limit", HeaderValue::from(*per_second));
                headers.insert("ratelimit-remaining", HeaderValue::from(0));
                headers.insert("ratelimit-reset", HeaderValue::from(*reset));
            }
            _ => {}
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            RouterError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RouterError::ModelNotFound { .. }
            | RouterError::NoRoute(_)
            | RouterError::RevisionNotServing { .. }
            | RouterError::VariantNotServing { .. }
            | RouterError::UnknownRequest(_) => StatusCode::NOT_FOUND,
            RouterError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RouterError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            RouterError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            RouterError::Forbidden { .. } | RouterError::AdminOnly => StatusCode::FORBIDDEN,
            RouterError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            RouterError::NoReadyReplica { .. }
            | RouterError::ColdStartBufferFull { .. }
            | RouterError::ColdStartTimeout { .. }
            | RouterError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
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
            RouterError::TooLarge { .. } | RouterError::UriTooLong { .. } => 11, // OUT_OF_RANGE
            RouterError::Unauthenticated { .. } => 16, // UNAUTHENTICATED
            RouterError::Forbidden { .. } | RouterError::AdminOnly => 7, // PERMISSION_DENIED
            RouterError::RateLimited { .. } => 8, // RESOURCE_EXHAUSTED
            RouterError::NoReadyReplica { .. }
            | RouterError::ColdStartBufferFull { .. }
            | RouterError::ColdStartTimeout { .. }
            | RouterError::Overloaded { .. }
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
            RouterError::UriTooLong { .. } => "uri_too_long",
            RouterError::Unauthenticated { .. } => "unauthenticated",
            RouterError::Forbidden { .. } => "forbidden",
            RouterError::AdminOnly => "admin_only",
            RouterError::RateLimited { .. } => "rate_limited",
            RouterError::NoReadyReplica { .. } => "no_ready_replica",
            RouterError::ColdStartBufferFull { .. } => "cold_start_buffer_full",
            RouterError::ColdStartTimeout { .. } => "cold_start_timeout",
            RouterError::Overloaded { .. } => "overloaded",
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
            RouterError::NoReadyReplica { .. } | RouterError::Overloaded { .. } => Some(1),
            RouterError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
