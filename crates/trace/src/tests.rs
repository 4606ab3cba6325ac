use super::*;

#[test]
fn with_tracing_off_nothing_is_recorded_and_headers_stay_as_they_came() {
    // No tracer is installed in this test binary.
    assert!(!enabled());
    let mut headers = http::HeaderMap::new();
    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    headers.insert(TRACEPARENT, incoming.parse().unwrap());
    let remote = Remote::from_headers(&headers);
    let span = Span::server("route", &remote);
    assert!(!span.is_recording());
    let child = span.child("forward", Kind::Client);
    child.inject(&mut headers);
    assert_eq!(headers[TRACEPARENT], incoming);
    assert_eq!(child.traceparent(), None);
}

#[test]
fn a_remote_context_is_read_from_both_headers() {
    let remote = Remote {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: Some("vendor=x".into()),
    };
    let cx = remote.context();
    let span = cx.span();
    let context = span.span_context();
    assert!(context.is_remote());
    assert_eq!(
        context.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
    assert!(context.is_sampled());
    assert_eq!(context.trace_state().header(), "vendor=x");
    // A malformed one is no parent at all.
    let bad = Remote {
        traceparent: Some("00-zz-1".into()),
        tracestate: None,
    };
    assert!(!bad.context().span().span_context().is_valid());
}
