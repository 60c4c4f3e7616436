//! The server-side tower layer that authenticates and authorizes each `ScanService` call
//! before it reaches a handler; health and reflection pass untouched.
//!
//! The caller is the URI (else DNS) SAN of its verified client certificate, else the `sub` of
//! its bearer JWT. No usable credential: UNAUTHENTICATED. A policy that does not let it call
//! the method: PERMISSION_DENIED. Both leave through `grpc::status`. The caller goes into the
//! request's extensions as [`Caller`], for the audit.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::{Either, Ready, ready};
use tonic::{
    Status,
    body::Body,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use super::InboundMetrics;
use crate::security::{Caller, MaxPriority, Policy, der, jwt::JwtVerifier, policy};
use crate::{
    error::Error,
    grpc::status::{code_of, refusal_reason},
    metrics::code_name,
    telemetry::AUDIT_TARGET,
};

const SCAN_SERVICE: &str = "/defender.scan.v1.ScanService/";

/// What the layer checks; shared by every clone.
#[derive(Debug, Default)]
pub struct Authenticator {
    /// Client certificates are verified by the TLS handshake; take the caller from them.
    pub mtls: bool,
    pub jwt: Option<JwtVerifier>,
    pub policy: Option<Policy>,
}

impl Authenticator {
    fn enabled(&self) -> bool {
        self.mtls || self.jwt.is_some()
    }

    /// The caller of a `ScanService` call, if it may make it, its quota share and its most
    /// urgent class (from the same policy rule).
    pub fn check<B>(
        &self,
        method: &str,
        request: &http::Request<B>,
    ) -> Result<(Caller, Option<CallerShare>, Option<MaxPriority>), Error> {
        let certificate = self
            .mtls
            .then(|| {
                let tls = request
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()?;
                der::caller_identity(tls.peer_certs()?.first()?)
            })
            .flatten();
        let bearer = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.get(..7)
                    .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                    .map(|_| v[7..].trim())
            });
        let caller = match (certificate, &self.jwt, bearer) {
            (Some(identity), _, _) => identity,
            (None, Some(jwt), Some(token)) => jwt
                .verify(token)
                .map_err(|err| Error::Unauthenticated(err.to_string()))?,
            (None, Some(_), None) => {
                return Err(Error::Unauthenticated(
                    "no credentials: send `authorization: Bearer <JWT>`".into(),
                ));
            }
            (None, None, _) => {
                return Err(Error::Unauthenticated(
                    "no client certificate with a URI or DNS subject alternative name".into(),
                ));
            }
        };
        let mut share = None;
        let mut max_priority = None;
        if let Some(policy) = &self.policy {
            let rule = policy.rule_of(&caller);
            if !rule.is_some_and(|rule| rule.role.allows(policy::need_of(method))) {
                return Err(Error::PermissionDenied {
                    caller,
                    rpc: method.to_owned(),
                });
            }
            share = rule.and_then(|rule| rule.quota_share).map(CallerShare);
            max_priority = rule.map(|rule| MaxPriority(rule.max_priority));
        }
        Ok((Caller(caller), share, max_priority))
    }
}

/// Request extension: the caller's share of the quota, from its policy rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallerShare(pub f64);

/// Wraps the gRPC server's routes in [`Authenticate`].
#[derive(Debug, Clone)]
pub struct AuthenticateLayer {
    auth: Arc<Authenticator>,
    metrics: InboundMetrics,
}

impl AuthenticateLayer {
    pub fn new(auth: Authenticator, metrics: InboundMetrics) -> Self {
        Self {
            auth: Arc::new(auth),
            metrics,
        }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            auth: self.auth.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Arc<Authenticator>,
    metrics: InboundMetrics,
}

impl<S, B> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(method) = request.uri().path().strip_prefix(SCAN_SERVICE) else {
            return Either::Right(self.inner.call(request));
        };
        if !self.auth.enabled() {
            return Either::Right(self.inner.call(request));
        }
        match self.auth.check(method, &request) {
            Ok((caller, share, max_priority)) => {
                if let Some(share) = share {
                    request.extensions_mut().insert(share);
                }
                if let Some(max_priority) = max_priority {
                    request.extensions_mut().insert(max_priority);
                }
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(error) => {
                let caller = match &error {
                    Error::PermissionDenied { caller, .. } => caller.as_str(),
                    _ => "unauthenticated",
                };
                self.metrics.record_refused(refusal_reason(&error));
                let peer = super::peer_of(&request);
                tracing::info!(
                    target: AUDIT_TARGET,
                    rpc = method,
                    peer = peer.map(tracing::field::display),
                    caller,
                    outcome = code_name(code_of(&error)),
                    "call refused"
                );
                Either::Left(ready(Ok(Status::from(error).into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// Answers OK with the caller it saw in the `x-caller` header.
    async fn call(auth: Authenticator, path: &str) -> http::Response<Body> {
        let inner = service_fn(|request: http::Request<()>| async move {
            let caller = request
                .extensions()
                .get::<Caller>()
                .map_or("none".to_owned(), |c| c.0.clone());
            let mut response = http::Response::new(Body::empty());
            response
                .headers_mut()
                .insert("x-caller", caller.parse().unwrap());
            Ok::<_, std::convert::Infallible>(response)
        });
        let request = http::Request::builder().uri(path).body(()).unwrap();
        AuthenticateLayer::new(auth, InboundMetrics::default())
            .layer(inner)
            .oneshot(request)
            .await
            .unwrap()
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }

    fn mtls() -> Authenticator {
        Authenticator {
            mtls: true,
            ..Authenticator::default()
        }
    }

    #[tokio::test]
    async fn without_authentication_everything_passes_unnamed() {
        let response = call(
            Authenticator::default(),
            "/defender.scan.v1.ScanService/StartScan",
        )
        .await;
        assert_eq!(grpc_status(&response), None);
        assert_eq!(response.headers()["x-caller"], "none");
    }

    #[tokio::test]
    async fn health_and_reflection_stay_open() {
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            let response = call(mtls(), path).await;
            assert_eq!(grpc_status(&response), None, "{path}");
        }
    }

    #[tokio::test]
    async fn a_scan_call_without_credentials_is_unauthenticated() {
        let response = call(mtls(), "/defender.scan.v1.ScanService/GetScan").await;
        // 16 = UNAUTHENTICATED
        assert_eq!(grpc_status(&response), Some("16"));
        assert!(response.headers().get("x-caller").is_none());
    }
}
