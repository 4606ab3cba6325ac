//! Ferry's distributed traces.
//!
//! A request's W3C `traceparent` (and `tracestate`) is read where it enters the router, the
//! router's phases (classify, pick, forward) become spans of one trace, and the request it
//! forwards carries a `traceparent` naming its forward span; the model server reads it and
//! adds its own (infer, with queue, batch and compute). Spans go to an OTLP/gRPC receiver when
//! one is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, read by [`init`] in the `ferry` binary,
//! cargo feature `otlp`); otherwise nothing is recorded and a request's `traceparent` passes
//! through the router unchanged.
//!
//! Spans are made with the OpenTelemetry API on the SDK's tracer (not through `tracing`): the
//! batcher knows when a request was queued and when its batch ran only after the fact, and the
//! API takes those times as they were.

use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

#[cfg(feature = "otlp")]
mod export;
#[cfg(feature = "otlp")]
pub use export::{Guard, InitError, init};

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";
/// Vendors' trace state, carried beside `traceparent`.
pub const TRACESTATE: &str = "tracestate";

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are recorded and exported in this process (a receiver is configured).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Use `tracer` for this process's spans (once; [`init`] calls it).
pub fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// The trace context a request arrived with: its `traceparent` and `tracestate` values.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Remote {
    /// From a request's headers (nothing is read while tracing is off).
    pub fn from_headers(headers: &http::HeaderMap) -> Remote {
        if !enabled() {
            return Remote::default();
        }
        let value = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        Remote {
            traceparent: value(TRACEPARENT),
            tracestate: value(TRACESTATE),
        }
    }

    /// From the header values themselves (a gRPC call's metadata).
    pub fn from_values(traceparent: Option<&str>, tracestate: Option<&str>) -> Remote {
        if !enabled() {
            return Remote::default();
        }
        Remote {
            traceparent: traceparent.map(String::from),
            tracestate: tracestate.map(String::from),
        }
    }

    fn context(&self) -> Context {
        TraceContextPropagator::new().extract(self)
    }
}

impl Extractor for Remote {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent.as_deref(),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE]
            .into_iter()
            .filter(|k| self.get(k).is_some())
            .collect()
    }
}

/// What a span is to its trace (OpenTelemetry's span kinds that Ferry uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request received (the router's, the server's).
    Server,
    /// A request sent (the router's forward).
    Client,
    /// A phase inside one process.
    Internal,
}

impl From<Kind> for SpanKind {
    fn from(kind: Kind) -> SpanKind {
        match kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
            Kind::Internal => SpanKind::Internal,
        }
    }
}

/// A started span (ended when dropped, or at the time [`Span::end_at`] says); `None` inside
/// while tracing is off, and then every method does nothing.
#[derive(Debug, Default)]
pub struct Span {
    cx: Option<Context>,
}

impl Span {
    /// A request's span in this process, child of the context it arrived with (a new trace
    /// when it came with none, or with one that does not parse).
    pub fn server(name: &'static str, remote: &Remote) -> Span {
        if !enabled() {
            return Span::none();
        }
        start(name, Kind::Server, remote.context(), None)
    }

    /// A span that does nothing (tracing off).
    pub fn none() -> Span {
        Span { cx: None }
    }

    /// Whether this span is recorded.
    pub fn is_recording(&self) -> bool {
        self.cx.is_some()
    }

    /// A child of this span, starting now.
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        match &self.cx {
            Some(cx) => start(name, kind, cx.clone(), None),
            None => Span::none(),
        }
    }

    /// A child of this span that began at `start` (still open: end it with [`Span::end_at`]).
    pub fn child_from(&self, name: &'static str, kind: Kind, start_time: SystemTime) -> Span {
        match &self.cx {
            Some(cx) => start(name, kind, cx.clone(), Some(start_time)),
            None => Span::none(),
        }
    }

    /// A finished child: from `start` to `end`, with `attributes`.
    pub fn record(
        &self,
        name: &'static str,
        start_time: SystemTime,
        end: SystemTime,
        attributes: &[(&'static str, i64)],
    ) {
        let child = self.child_from(name, Kind::Internal, start_time);
        for (key, value) in attributes {
            child.attribute(key, *value);
        }
        child.end_at(end);
    }

    /// Set an attribute (a number or a flag; [`Span::text`] for strings).
    pub fn attribute(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(cx) = &self.cx {
            cx.span().set_attribute(KeyValue::new(key, value.into()));
        }
    }

    /// Set a string attribute (copied only when the span is recorded: the hot path of a
    /// process with tracing off allocates nothing).
    pub fn text(&self, key: &'static str, value: &str) {
        if let Some(cx) = &self.cx {
            cx.span()
                .set_attribute(KeyValue::new(key, value.to_string()));
        }
    }

    /// Mark the span failed, with why (formatted only when the span is recorded).
    pub fn error(&self, message: impl std::fmt::Display) {
        if let Some(cx) = &self.cx {
            cx.span().set_status(Status::error(message.to_string()));
        }
    }

    /// Write this span's `traceparent` (and the trace's `tracestate`) into `headers`, replacing
    /// the ones the request arrived with.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        if let Some(cx) = &self.cx {
            TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
        }
    }

    /// This span's `traceparent` value.
    pub fn traceparent(&self) -> Option<String> {
        let mut headers = http::HeaderMap::new();
        self.inject(&mut headers);
        headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }

    /// End the span at `end`.
    pub fn end_at(mut self, end: SystemTime) {
        if let Some(cx) = self.cx.take() {
            cx.span().end_with_timestamp(end);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(cx) = self.cx.take() {
            cx.span().end();
        }
    }
}

fn start(name: &'static str, kind: Kind, parent: Context, at: Option<SystemTime>) -> Span {
    let Some(tracer) = TRACER.get() else {
        return Span::none();
    };
    let mut builder = tracer.span_builder(name).with_kind(kind.into());
    if let Some(at) = at {
        builder = builder.with_start_time(at);
    }
    let span = builder.start_with_context(tracer, &parent);
    Span {
        cx: Some(parent.with_span(span)),
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests;
