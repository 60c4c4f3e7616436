//! One server span per gRPC call, continuing the caller's trace (W3C `traceparent`,
//! `tracestate` and `baggage` in the metadata).
//!
//! The span follows OpenTelemetry's RPC conventions: named `{rpc.service}/{rpc.method}`, kind
//! server, `rpc.system = "grpc"`, `rpc.grpc.status_code`, and status ERROR for the codes that
//! mean the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
//! DATA_LOSS). It lasts until the response body ends, so a stream's span ends with its
//! trailers; the handler, the stream task, quota waits, token fetches and upstream calls all
//! happen inside it. Health checks and reflection get no span.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use opentelemetry::Context as OtelContext;
use pin_project_lite::pin_project;
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{metrics::code_name, telemetry::propagation};

/// Wraps the gRPC server's routes in [`ServerSpan`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSpanLayer;

impl ServerSpanLayer {
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for ServerSpanLayer {
    type Service = ServerSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerSpan { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ServerSpan<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ServerSpan<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(span) = server_span(&request) else {
            return ResponseFuture {
                inner: self.inner.call(request),
                traced: None,
            };
        };
        let remote = propagation::extract(request.headers());
        // With the OpenTelemetry layer the span itself continues the caller's trace. Without
        // it, a context of our own keeps the caller's trace id for the logs and for the
        // `traceparent` sent upstream.
        let otel_cx = span
            .set_parent(remote.clone())
            .err()
            .map(|_| propagation::local_context(&remote));
        let inner = {
            let _entered = span.enter();
            let _attached = otel_cx.clone().map(OtelContext::attach);
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            traced: Some(Traced { span, otel_cx }),
        }
    }
}

/// The span of a `ScanService` call; `None` for other paths.
fn server_span<B>(request: &http::Request<B>) -> Option<Span> {
    let path = request.uri().path().strip_prefix('/')?;
    let (service, method) = path.split_once('/')?;
    if service.starts_with("grpc.health.") || service.starts_with("grpc.reflection.") {
        return None;
    }
    let peer = super::peer_of(request);
    Some(tracing::info_span!(
        "grpc request",
        otel.name = path,
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
        network.peer.address = peer.map(|a| tracing::field::display(a.ip())),
        network.peer.port = peer.map(|a| a.port()),
    ))
}

/// Records the call's final status on its span.
fn record_status(span: &Span, code: Code, message: &str) {
    span.record("rpc.grpc.status_code", code as i64);
    let server_failed = matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    );
    if server_failed {
        span.record("error.type", code_name(code));
        if message.is_empty() {
            span.record("otel.status_code", "ERROR");
        } else {
            span.record("otel.status_description", message);
        }
    }
}

struct Traced {
    span: Span,
    /// The call's own context when spans are not exported.
    otel_cx: Option<OtelContext>,
}

pin_project! {
    /// Polls the handler inside the span, then hands the span to the response body.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        traced: Option<Traced>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(traced) = this.traced.as_ref() else {
            return this.inner.poll(cx);
        };
        let result = {
            let _entered = traced.span.enter();
            let _attached = traced.otel_cx.clone().map(OtelContext::attach);
            ready!(this.inner.poll(cx))
        };
        let Traced { span, .. } = this.traced.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                // A call refused at once answers with its status in the headers, no trailers.
                let status = Status::from_header_map(response.headers());
                if let Some(status) = &status {
                    record_status(&span, status.code(), status.message());
                }
                Ok(response.map(|inner| {
                    Body::new(TracedBody {
                        inner,
                        span,
                        done: status.is_some(),
                    })
                }))
            }
            Err(err) => {
                record_status(&span, Code::Unknown, "");
                Err(err)
            }
        })
    }
}

pin_project! {
    /// A response body that keeps the call's span open until its trailers have gone out.
    struct TracedBody {
        #[pin]
        inner: Body,
        span: Span,
        done: bool,
    }

    impl PinnedDrop for TracedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.done {
                // Dropped before the end: the caller went away.
                record_status(this.span, Code::Cancelled, "");
            }
        }
    }
}

impl http_body::Body for TracedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !*this.done {
            match &frame {
                Some(Ok(frame)) => {
                    if let Some(status) = frame.trailers_ref().and_then(Status::from_header_map) {
                        record_status(this.span, status.code(), status.message());
                        *this.done = true;
                    }
                }
                Some(Err(status)) => {
                    record_status(this.span, status.code(), status.message());
                    *this.done = true;
                }
                None => *this.done = true,
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::testing::{self, attr};
    use http_body::Body as _;
    use std::{collections::VecDeque, convert::Infallible};
    use tower::{ServiceExt, service_fn};

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

    /// A response body of the given frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// A stream answer: one message, then trailers with `code`.
    fn streamed(code: Code) -> http::Response<Body> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", (code as i32).to_string().parse().unwrap());
        trailers.insert("grpc-message", "upstream%20down".parse().unwrap());
        http::Response::new(Body::new(Frames(VecDeque::from([
            Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
            Frame::trailers(trailers),
        ]))))
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(path)
            .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
            .body(())
            .unwrap()
    }

    /// Calls the layer over an inner service answering `code` in trailers, reads the whole
    /// body; returns the trace id the handler saw.
    async fn call(path: &str, code: Code) -> Option<String> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let log = seen.clone();
        let inner = service_fn(move |_request: http::Request<()>| {
            *log.lock().unwrap() = propagation::current_ids().map(|(t, _)| t.to_string());
            async move { Ok::<_, Infallible>(streamed(code)) }
        });
        let response = ServerSpanLayer::new()
            .layer(inner)
            .oneshot(request(path))
            .await
            .unwrap();
        let mut body = response.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.unwrap();
        }
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_call_span_continues_the_callers_trace_and_ends_with_the_trailers() {
        let (spans, _guard) = testing::install();
        let seen = call("/defender.scan.v1.ScanService/RunScan", Code::Unavailable).await;
        assert_eq!(
            seen.as_deref(),
            Some(TRACE_ID),
            "the handler runs in the trace"
        );

        let finished = spans.finished();
        assert_eq!(finished.len(), 1);
        let span = &finished[0];
        assert_eq!(span.name, "defender.scan.v1.ScanService/RunScan");
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Server);
        assert_eq!(span.span_context.trace_id().to_string(), TRACE_ID);
        assert_eq!(span.parent_span_id.to_string(), CALLER_SPAN_ID);
        assert_eq!(attr(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attr(span, "rpc.method").as_deref(), Some("RunScan"));
        assert_eq!(attr(span, "rpc.grpc.status_code").as_deref(), Some("14"));
        assert_eq!(attr(span, "error.type").as_deref(), Some("UNAVAILABLE"));
        assert_eq!(
            span.status,
            opentelemetry::trace::Status::error("upstream down")
        );
    }

    #[tokio::test]
    async fn a_refusal_by_the_caller_is_not_a_server_error() {
        let (spans, _guard) = testing::install();
        call("/defender.scan.v1.ScanService/StartScan", Code::NotFound).await;
        let span = &spans.finished()[0];
        assert_eq!(attr(span, "rpc.grpc.status_code").as_deref(), Some("5"));
        assert_eq!(span.status, opentelemetry::trace::Status::Unset);
    }

    #[tokio::test]
    async fn health_checks_and_reflection_get_no_span() {
        let (spans, _guard) = testing::install();
        call("/grpc.health.v1.Health/Check", Code::Ok).await;
        call(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            Code::Ok,
        )
        .await;
        assert!(spans.finished().is_empty());
    }

    #[tokio::test]
    async fn without_span_export_the_call_still_runs_in_the_callers_trace() {
        // No OpenTelemetry layer here: the layer gives the call a context of its own.
        let seen = call("/defender.scan.v1.ScanService/GetScan", Code::Ok).await;
        assert_eq!(seen.as_deref(), Some(TRACE_ID));
    }

    #[tokio::test]
    async fn a_stream_the_caller_drops_ends_as_cancelled() {
        let (spans, _guard) = testing::install();
        let inner = service_fn(|_request: http::Request<()>| async {
            Ok::<_, Infallible>(streamed(Code::Ok))
        });
        let response = ServerSpanLayer::new()
            .layer(inner)
            .oneshot(request("/defender.scan.v1.ScanService/WatchScan"))
            .await
            .unwrap();
        assert!(spans.finished().is_empty(), "open while the body is");
        drop(response);
        let span = &spans.finished()[0];
        assert_eq!(attr(span, "rpc.grpc.status_code").as_deref(), Some("1"));
    }
}
