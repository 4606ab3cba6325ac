//! What the router answers with: whole bodies ([`Buffered`], with a replica's trailers), and
//! the one place router errors become responses.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use hyper::body::Frame;

use crate::error::RouterError;

pub(crate) fn json(status: StatusCode, body: String) -> Response<Buffered> {
    let mut response = Response::new(Buffered::data(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The one place router errors become responses: OIP's `{"error": ...}` for REST, a
/// trailers-only gRPC status for gRPC.
pub(crate) fn error_response(error: &RouterError, grpc: bool) -> Response<Buffered> {
    if grpc {
        let mut response = Response::new(Buffered::data(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(error.grpc_code()));
        error.headers(headers);
        if let Some(seconds) = error.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Ok(message) = HeaderValue::from_str(
            &error
                .to_string()
                .replace(|c: char| !c.is_ascii() || c.is_ascii_control(), " "),
        ) {
            headers.insert("grpc-message", message);
        }
        return response;
    }
    let mut response = json(
        error.http_status(),
        serde_json::json!({ "error": error.to_string() }).to_string(),
    );
    let headers = response.headers_mut();
    error.headers(headers);
    if let Some(seconds) = error.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A whole response body, with the replica's trailers (gRPC status) when it sent any.
pub struct Buffered {
    pub(crate) data: Option<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
}

impl Buffered {
    pub(crate) fn data(data: Bytes) -> Self {
        Buffered {
            data: Some(data),
            trailers: None,
        }
    }
}

impl hyper::body::Body for Buffered {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take().filter(|d| !d.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(Bytes::is_empty) && self.trailers.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let len = self.data.as_ref().map_or(0, |d| d.len() as u64);
        if self.trailers.is_some() {
            let mut hint = hyper::body::SizeHint::new();
            hint.set_lower(len);
            hint
        } else {
            hyper::body::SizeHint::with_exact(len)
        }
    }
}
