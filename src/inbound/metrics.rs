//! The inbound side's metrics: calls refused before their handler and connections refused at
//! accept, by reason; open connections, and the ones the gateway closed, by reason.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The inbound layers' family, one for all of them. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct InboundMetrics {
    refused: Family<ReasonLabel, Counter>,
    connections: Gauge,
    closed: Family<ReasonLabel, Counter>,
    unauthenticated: Gauge,
}

// === impl InboundMetrics ===

impl InboundMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "grpc_server_refused",
            "ScanService calls refused before their handler (unauthenticated, \
             permission_denied, caller_rate, caller_streams) and connections refused at accept \
             (connection_limit, peer_connection_limit)",
            metrics.refused.clone(),
        );
        registry.register(
            "unauthenticated_callers_allowed",
            "1 when callers are served without authentication (no mutual TLS, no JWTs)",
            metrics.unauthenticated.clone(),
        );
        registry.register(
            "grpc_server_connections",
            "Open client connections",
            metrics.connections.clone(),
        );
        registry.register(
            "grpc_server_connections_closed",
            "Client connections the gateway closed: handshake_timeout, idle, shutdown",
            metrics.closed.clone(),
        );
        metrics
    }

    pub fn set_unauthenticated(&self, allowed: bool) {
        self.unauthenticated.set(i64::from(allowed));
    }

    pub fn set_connections(&self, open: usize) {
        self.connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// A connection the gateway closed, for `reason`.
    pub fn record_connection_closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A call refused by the server's layers (authentication, policy, caller limits).
    pub fn record_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }
}
