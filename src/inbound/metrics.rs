//! The inbound layers' metric: calls refused before their handler, by reason.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabel {
    reason: &'static str,
}

/// The inbound layers' family, one for all of them. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct InboundMetrics {
    refused: Family<RefusedLabel, Counter>,
}

// === impl InboundMetrics ===

impl InboundMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "grpc_server_refused",
            "ScanService calls refused before their handler: unauthenticated, \
             permission_denied, caller_rate, caller_streams",
            metrics.refused.clone(),
        );
        metrics
    }

    /// A call refused by the server's layers (authentication, policy, caller limits).
    pub fn record_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabel { reason }).inc();
    }
}
