//! One client span and one metric sample per upstream call, and the W3C `traceparent` of that
//! span on the request, so Defender's side of the call belongs to the caller's trace.
//!
//! Span fields follow OpenTelemetry's HTTP client conventions (`http.request.method`,
//! `url.full`, `server.address`, `server.port`, `http.response.status_code`, `error.type`), so
//! the OTLP exporter passes them through unchanged. A 4xx or 5xx answer or a failed call sets
//! the span status to ERROR. The span is outermost in the stack: it includes the quota wait and
//! every resend of the retry policy.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use opentelemetry::{Context as OtelContext, trace::TraceContextExt};
use tower::{Layer, Service, layer::layer_fn};
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::UpstreamMetrics;
use crate::{
    call::{Request, Response, api_of},
    telemetry::propagation,
    upstream::Error,
};

/// See the module docs.
#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    metrics: UpstreamMetrics,
}

impl<S> Trace<S> {
    pub fn layer(metrics: UpstreamMetrics) -> impl Layer<S, Service = Self> + Clone {
        layer_fn(move |inner| Self {
            inner,
            metrics: metrics.clone(),
        })
    }
}

impl<S> Service<Request> for Trace<S>
where
    S: Service<Request, Response = Response, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let api = api_of(&request);
        let uri = request.uri();
        // DEBUG under its own target: logs skip it unless RUST_LOG asks for it (then a call
        // costs no span at all), while span export always takes it (telemetry::init).
        let span = tracing::span!(
            target: crate::telemetry::UPSTREAM_SPAN_TARGET,
            tracing::Level::DEBUG,
            "upstream call",
            otel.kind = "client",
            otel.name = %format_args!("{} {}", request.method(), api),
            otel.status_code = Empty,
            otel.status_description = Empty,
            api = %api,
            http.request.method = %request.method(),
            url.full = %uri,
            server.address = uri.host().unwrap_or_default(),
            server.port = server_port(uri),
            http.response.status_code = Empty,
            error.type = Empty,
        );
        // The span's own context when spans are exported; otherwise the call's context, which
        // still carries the caller's trace id.
        let cx = span.context();
        let cx = if cx.span().span_context().is_valid() {
            cx
        } else {
            OtelContext::current()
        };
        propagation::inject(&cx, request.headers_mut());
        let started = tokio::time::Instant::now();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(
            async move {
                let result = future.await;
                let span = tracing::Span::current();
                let outcome = match &result {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        span.record("http.response.status_code", status);
                        if status >= 400 {
                            span.record("error.type", status.to_string());
                            span.record("otel.status_code", "ERROR");
                            // The caller's outcome is logged where its call ends; a 4xx is
                            // often an answer the gateway expects (a scan already running, an
                            // unknown id). A 429 should never happen under the quota.
                            match status {
                                429 => tracing::warn!(status, "upstream throttled a call"),
                                500.. => tracing::info!(status, "upstream answered with an error"),
                                _ => tracing::debug!(status, "upstream answered with an error"),
                            }
                        } else {
                            tracing::debug!(status, "upstream answered");
                        }
                        status.to_string()
                    }
                    Err(err) => {
                        span.record("error.type", err.kind());
                        span.record("otel.status_description", err.to_string());
                        tracing::warn!(error = %err, "upstream call failed");
                        err.kind().to_owned()
                    }
                };
                metrics.record_upstream(api.as_str(), outcome, started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

/// The port, also when the URL leaves the scheme's default implicit.
fn server_port(uri: &http::Uri) -> Option<u16> {
    uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Api;
    use bytes::Bytes;
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn records_each_call_by_api_and_status() {
        let mut registry = crate::metrics::registry();
        let upstream = UpstreamMetrics::register(&mut registry);
        let metrics = crate::metrics::Metrics::new(registry);
        let inner = service_fn(|_request: Request| async {
            let mut response = http::Response::new(Bytes::new());
            *response.status_mut() = http::StatusCode::NOT_FOUND;
            Ok::<_, Error>(response)
        });
        let service = Trace::layer(upstream).layer(inner);

        let mut request = http::Request::new(Bytes::new());
        request.extensions_mut().insert(Api::GetAction);
        let response = service.oneshot(request).await.unwrap();

        assert_eq!(response.status(), 404);
        assert!(metrics.render().contains(
            r#"scan_gateway_upstream_requests_total{api="get_machine_action",status="404"} 1"#
        ));
    }

    /// Sends a GET for `Api::GetAction` through the layer to an inner service answering
    /// `status`; returns the `traceparent` the inner service received.
    async fn traceparent_sent(status: u16) -> Option<String> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let log = seen.clone();
        let inner = service_fn(move |request: Request| {
            *log.lock().unwrap() = request
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned());
            async move {
                let mut response = http::Response::new(Bytes::new());
                *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                Ok::<_, Error>(response)
            }
        });
        let service = Trace::layer(UpstreamMetrics::default()).layer(inner);
        let mut request = http::Request::new(Bytes::new());
        *request.uri_mut() = "https://api.security.microsoft.com/api/machineactions/x"
            .parse()
            .unwrap();
        request.extensions_mut().insert(Api::GetAction);
        service.oneshot(request).await.unwrap();
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn sends_the_traceparent_of_its_client_span_and_marks_error_answers() {
        let (spans, _guard) = crate::telemetry::testing::install();
        let caller = tracing::info_span!("caller");
        let sent = traceparent_sent(503).instrument(caller).await.unwrap();

        let finished = spans.finished();
        let client = finished
            .iter()
            .find(|s| s.name == "GET get_machine_action")
            .expect("a client span");
        let caller = finished.iter().find(|s| s.name == "caller").unwrap();
        assert_eq!(client.span_kind, opentelemetry::trace::SpanKind::Client);
        assert_eq!(client.parent_span_id, caller.span_context.span_id());
        assert_eq!(
            sent,
            format!(
                "00-{}-{}-01",
                client.span_context.trace_id(),
                client.span_context.span_id()
            )
        );
        let attr = |key| crate::telemetry::testing::attr(client, key);
        assert_eq!(attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(
            attr("server.address").as_deref(),
            Some("api.security.microsoft.com")
        );
        assert_eq!(attr("server.port").as_deref(), Some("443"));
        assert_eq!(attr("http.response.status_code").as_deref(), Some("503"));
        assert_eq!(attr("error.type").as_deref(), Some("503"));
        assert_eq!(client.status, opentelemetry::trace::Status::error(""));
    }

    #[tokio::test]
    async fn without_span_export_the_calls_own_trace_goes_upstream() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = propagation::local_context(&propagation::extract(&headers));
        let call_span = cx.span().span_context().span_id();
        let sent = {
            use opentelemetry::context::FutureExt as _;
            traceparent_sent(200).with_context(cx).await.unwrap()
        };
        assert_eq!(
            sent,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{call_span}-01")
        );
    }

    #[tokio::test]
    async fn outside_any_trace_nothing_is_sent() {
        assert_eq!(traceparent_sent(200).await, None);
    }
}
