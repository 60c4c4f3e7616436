//! W3C trace context in and out: the caller's `traceparent`, `tracestate` and `baggage` are
//! read from the gRPC metadata; `traceparent` and `tracestate` (never the baggage, which is
//! for our own services, not Microsoft's) go out on every Defender request.
//!
//! With spans exported, tracing-opentelemetry makes the ids. Without, [`local_context`] gives
//! each RPC a context of its own that keeps the caller's trace id, so log lines and upstream
//! requests still carry one trace id per call at the cost of two random numbers.

use http::HeaderMap;
use opentelemetry::{
    Context,
    propagation::TextMapPropagator,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::{
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{IdGenerator, RandomIdGenerator},
};

/// The caller's context: its span (if `traceparent` is valid) and its baggage.
pub fn extract(headers: &HeaderMap) -> Context {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    BaggagePropagator::new().extract_with_context(&cx, &HeaderExtractor(headers))
}

/// Writes `traceparent` (and `tracestate`) for the span of `cx`; nothing when it has none.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The context of one RPC when spans are not exported: the caller's trace id (or a new one),
/// the caller's flags and state, and a span id of its own.
pub fn local_context(remote: &Context) -> Context {
    let ids = RandomIdGenerator::default();
    let span = remote.span();
    let parent = span.span_context();
    let (trace_id, flags, state) = if parent.is_valid() {
        (
            parent.trace_id(),
            parent.trace_flags(),
            parent.trace_state().clone(),
        )
    } else {
        (ids.new_trace_id(), TraceFlags::default(), TraceState::NONE)
    };
    let local = SpanContext::new(trace_id, ids.new_span_id(), flags, false, state);
    remote.with_remote_span_context(local)
}

/// The trace and span id of the current context, if it has a valid span.
pub fn current_ids() -> Option<(TraceId, SpanId)> {
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_local_context_keeps_the_callers_trace_and_flags_with_a_new_span() {
        let remote = extract(&headers(&[
            ("traceparent", TRACEPARENT),
            ("tracestate", "vendor=x"),
            ("baggage", "tenant=contoso"),
        ]));
        let cx = local_context(&remote);
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert_eq!(
            opentelemetry::baggage::BaggageExt::baggage(&cx)
                .get("tenant")
                .map(|v| v.to_string()),
            Some("contoso".to_owned())
        );

        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        let sent = out["traceparent"].to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"), "{sent}");
        assert_eq!(out["tracestate"], "vendor=x");
        assert!(out.get("baggage").is_none(), "baggage stays inside");
    }

    #[test]
    fn without_a_valid_traceparent_a_new_trace_starts() {
        let remote = extract(&headers(&[("traceparent", "00-garbage-01")]));
        let cx = local_context(&remote);
        assert!(cx.span().span_context().is_valid());
        let _guard = cx.attach();
        assert!(current_ids().is_some());
    }

    #[test]
    fn no_context_means_no_ids_and_no_header() {
        assert_eq!(current_ids(), None);
        let mut out = HeaderMap::new();
        inject(&Context::new(), &mut out);
        assert!(out.is_empty());
    }
}
