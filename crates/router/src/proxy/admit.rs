//! Phase 2, authorize / limit, as the request path calls it: the namespace's API key and its
//! bucket (`crate::access`), the namespace's own bucket, then the service's bucket once the
//! model is known.

use super::Router;
use crate::access;
use crate::error::RouterError;
use crate::table::Compiled;

impl Router {
    /// Phase 2: the namespace's API key (401 / 403), the key's bucket, the namespace's and,
    /// when the model is known, the service's (429). The key is removed from what replicas see.
    pub(crate) fn admit(
        &self,
        compiled: &Compiled,
        namespace: &str,
        model: Option<&str>,
        parts: &mut http::request::Parts,
    ) -> Result<(), RouterError> {
        if let Some(key) = compiled.access.authorize(namespace, &parts.headers)? {
            if let Some(limiter) = &key.limiter {
                access::take(limiter, || format!("API key {}", key.key.id))?;
            }
            access::strip_credentials(&mut parts.headers);
        }
        if let Some(limiter) = compiled.access.namespace_limiter(namespace) {
            access::take(limiter, || {
                format!(
                    "namespace {namespace} (annotation {})",
                    ferry_api::namespace::ANNOTATION_RATE_LIMIT
                )
            })?;
        }
        if let Some(model) = model {
            service_bucket(compiled, namespace, model)?;
        }
        Ok(())
    }
}

/// The service's own bucket (`spec.rateLimit`), when it has one.
pub(super) fn service_bucket(
    compiled: &Compiled,
    namespace: &str,
    model: &str,
) -> Result<(), RouterError> {
    if let Some(service) = compiled.lookup(namespace, model)
        && let Some(limiter) = &service.limiter
    {
        access::take(limiter, || {
            format!(
                "service {} in namespace {} (spec.rateLimit)",
                service.service, service.namespace
            )
        })?;
    }
    Ok(())
}
