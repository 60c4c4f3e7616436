//! One client span and one metric sample per upstream call.
//!
//! Span fields follow OpenTelemetry's HTTP client conventions (`http.request.method`,
//! `url.full`, `server.address`, `http.response.status_code`, `error.type`), so the OTLP
//! exporter can pass them through unchanged.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};

use crate::{
    metrics::Metrics,
    upstream::{Api, Error, Request, Response},
};

/// Wraps a service in [`Trace`].
#[derive(Clone)]
pub struct TraceLayer {
    metrics: Metrics,
}

impl TraceLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    metrics: Metrics,
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

    fn call(&mut self, request: Request) -> Self::Future {
        let api = request
            .extensions()
            .get::<Api>()
            .copied()
            .expect("DefenderClient tags every request with its Api");
        let uri = request.uri();
        let span = tracing::info_span!(
            "upstream call",
            otel.kind = "client",
            otel.name = %format_args!("{} {}", request.method(), api),
            api = %api,
            http.request.method = %request.method(),
            url.full = %uri,
            server.address = uri.host().unwrap_or_default(),
            server.port = uri.port_u16(),
            http.response.status_code = Empty,
            error.type = Empty,
        );
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
                            span.record("error.type", status);
                            tracing::info!(status, "upstream answered with an error");
                        } else {
                            tracing::debug!(status, "upstream answered");
                        }
                        status.to_string()
                    }
                    Err(err) => {
                        span.record("error.type", err.kind());
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn records_each_call_by_api_and_status() {
        let metrics = Metrics::new();
        let inner = service_fn(|_request: Request| async {
            let mut response = http::Response::new(Bytes::new());
            *response.status_mut() = http::StatusCode::NOT_FOUND;
            Ok::<_, Error>(response)
        });
        let service = TraceLayer::new(metrics.clone()).layer(inner);

        let mut request = http::Request::new(Bytes::new());
        request.extensions_mut().insert(Api::GetAction);
        let response = service.oneshot(request).await.unwrap();

        assert_eq!(response.status(), 404);
        assert!(metrics.render().contains(
            r#"scan_gateway_upstream_requests_total{api="get_machine_action",status="404"} 1"#
        ));
    }
}
