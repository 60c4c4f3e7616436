//! The inbound side: the tower layers every gRPC request passes before a handler, one
//! concern per file, assembled in one place, [`layers`]. Health and reflection pass them
//! untouched but for the span.

pub mod authenticate;
pub mod connections;
mod guarded;
pub mod limits;
mod metrics;
pub mod span;
pub mod timeout;

use std::sync::Arc;

use tower::{ServiceBuilder, layer::util::Identity, layer::util::Stack};

pub use authenticate::{AuthenticateLayer, Authenticator};
pub use connections::{ConnectionCallsLayer, ConnectionLimits, Connections};
pub use limits::{Limiter, LimitsLayer};
pub use metrics::InboundMetrics;
pub use span::ServerSpanLayer;
pub use timeout::GrpcTimeoutLayer;

/// The remote address of the connection a request came on (plain or TLS).
pub fn peer_of<B>(request: &http::Request<B>) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

/// The inbound layers, outermost first.
pub type Layers = ServiceBuilder<
    Stack<
        LimitsLayer,
        Stack<
            AuthenticateLayer,
            Stack<GrpcTimeoutLayer, Stack<ServerSpanLayer, Stack<ConnectionCallsLayer, Identity>>>,
        >,
    >,
>;

/// Builds the inbound stack, outermost layer first.
pub fn layers(
    connections: Connections,
    auth: Authenticator,
    limiter: Arc<Limiter>,
    metrics: InboundMetrics,
) -> Layers {
    ServiceBuilder::new()
        // Every call, health and reflection too, keeps its connection from being idle.
        .layer(ConnectionCallsLayer::new(connections))
        // One server span per ScanService call, continuing the caller's trace.
        .layer(ServerSpanLayer::new())
        // A deadline the caller cannot have meant.
        .layer(GrpcTimeoutLayer::new(metrics.clone()))
        // Who is calling, and may they (inside the span, so refusals are traced).
        .layer(AuthenticateLayer::new(auth, metrics.clone()))
        // Then per-caller rate and open streams, counted by that identity.
        .layer(LimitsLayer::new(limiter, metrics))
}
