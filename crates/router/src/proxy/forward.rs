//! Phase 5, forward: the request to one replica (over its Unix socket when the table gives
//! one), its answer read whole, hop-by-hop headers dropped both ways, the revision, variant
//! and request id added.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Version, header};
use http_body_util::{BodyExt, Full};

use super::{REVISION_HEADER, Router, VARIANT_HEADER};
use crate::body::Buffered;
use crate::error::RouterError;
use crate::pool::error_chain;
use crate::table::{BackendState, InFlightGuard, RevisionState};

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(ferry_api::HEADER_REQUEST_ID);

impl Router {
    pub(super) async fn forward(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        revision: &RevisionState,
        backend: &Arc<BackendState>,
        grpc: bool,
        span: &ferry_trace::Span,
    ) -> Result<Response<Buffered>, RouterError> {
        let _outstanding = InFlightGuard::new(backend.clone());
        let upstream_error = |cause: String| RouterError::Upstream {
            backend: backend.backend.id.clone(),
            cause,
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let build = |version: Version| {
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = parts.method.clone();
            // HTTP/1.1 in origin form; HTTP/2 needs scheme and authority for its pseudo-headers.
            let uri = if version == Version::HTTP_2 {
                http::Uri::try_from(format!("http://{}{path}", backend.backend.addrs.grpc))
            } else {
                http::Uri::try_from(path)
            };
            *request.uri_mut() = uri.unwrap_or_else(|_| http::Uri::from_static("/"));
            *request.version_mut() = version;
            copy_end_to_end(&parts.headers, request.headers_mut(), grpc);
            // The server's spans are children of this forward.
            span.inject(request.headers_mut());
            request
        };
        let timeout = self.inner.config.connect_timeout;
        let pool = backend.pool();
        let (response, lease) = if grpc {
            let response = pool
                .send_http2(
                    backend.backend.addrs.grpc,
                    backend.backend.addrs.grpc_unix.as_deref(),
                    timeout,
                    build(Version::HTTP_2),
                )
                .await
                .map_err(|e| upstream_error(e.0))?;
            (response, None)
        } else {
            let (response, lease) = pool
                .send_http1(
                    backend.backend.addrs.http,
                    backend.backend.addrs.http_unix.as_deref(),
                    timeout,
                    || build(Version::HTTP_11),
                )
                .await
                .map_err(|e| upstream_error(e.0))?;
            (response, Some(lease))
        };
        let (mut head, upstream_body) = response.into_parts();
        let collected = upstream_body
            .collect()
            .await
            .map_err(|e| upstream_error(error_chain(&e)))?;
        if let Some(lease) = lease {
            pool.release(lease);
        }
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        strip_hop_by_hop(&mut head.headers);
        head.version = Version::HTTP_11;
        if let Some(value) = &revision.header {
            head.headers.insert(REVISION_HEADER, value.clone());
        }
        if let Some(value) = &revision.variant_header {
            head.headers.insert(VARIANT_HEADER, value.clone());
        }
        // The request's id: feedback names it, and it carries the variant that answered
        // (`<variant>.<random>`), so any router replica can attribute the reward.
        let id = match &revision.variant {
            Some(variant) => format!("{variant}.{:032x}", fastrand::u128(..)),
            None => format!("{:032x}", fastrand::u128(..)),
        };
        if let Ok(value) = HeaderValue::from_str(&id) {
            head.headers.insert(REQUEST_ID_HEADER, value);
        }
        Ok(Response::from_parts(
            head,
            Buffered {
                data: Some(data),
                trailers,
            },
        ))
    }
}

/// Typed names, not strings: a `&str` key is parsed into a header name on every lookup.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap, grpc: bool) {
    to.reserve(from.len() + 1);
    for (name, value) in from {
        if name == header::HOST || HOP_BY_HOP.contains(name) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    if grpc {
        to.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}
