//! A `grpc-timeout` header that cannot be read is refused with `INVALID_ARGUMENT` before any
//! handler, as the gRPC spec allows: taken as "no deadline", a caller's typo would let its
//! call wait far longer than it meant (counted as `bad_grpc_timeout`).

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tonic::body::Body;
use tower::{Layer, Service};

use super::InboundMetrics;
use crate::{domain::FieldViolation, error::Error, grpc::grpc_timeout_is_valid};

/// Wraps the server's routes in [`GrpcTimeoutCheck`].
#[derive(Debug, Clone)]
pub struct GrpcTimeoutLayer(InboundMetrics);

impl GrpcTimeoutLayer {
    pub fn new(metrics: InboundMetrics) -> Self {
        Self(metrics)
    }
}

impl<S> Layer<S> for GrpcTimeoutLayer {
    type Service = GrpcTimeoutCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTimeoutCheck {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct GrpcTimeoutCheck<S> {
    inner: S,
    metrics: InboundMetrics,
}

impl<S, B> Service<http::Request<B>> for GrpcTimeoutCheck<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let unreadable = request
            .headers()
            .get("grpc-timeout")
            .is_some_and(|raw| !raw.to_str().is_ok_and(grpc_timeout_is_valid));
        if !unreadable {
            return Either::Right(self.inner.call(request));
        }
        self.metrics.record_refused("bad_grpc_timeout");
        let error = Error::from(FieldViolation::new(
            "grpc-timeout",
            "must be 1 to 8 digits and a unit (H, M, S, m, u or n), as the gRPC spec says",
        ));
        Either::Left(ready(Ok(tonic::Status::from(error).into_http())))
    }
}
