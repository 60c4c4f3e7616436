//! The shared store's metrics: whether this replica decides alone because Redis is unreachable,
//! and how often its heartbeat task panicked (and was restarted).

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

/// The shared store's family. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct SharedMetrics {
    fallback: Gauge,
    heartbeat_panics: Counter,
}

// === impl SharedMetrics ===

impl SharedMetrics {
    /// Registered by the quota's metrics (see `QuotaMetrics::register`), store or no store.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "quota_fallback",
            "1 while Redis is unreachable and this replica uses its share of the quota",
            metrics.fallback.clone(),
        );
        registry.register(
            "quota_heartbeat_panics",
            "Panics of the shared quota's heartbeat task, each followed by a restart",
            metrics.heartbeat_panics.clone(),
        );
        metrics
    }

    pub fn record_heartbeat_panic(&self) {
        self.heartbeat_panics.inc();
    }

    pub fn set_quota_fallback(&self, fallback: bool) {
        self.fallback.set(i64::from(fallback));
    }
}
