//! The shared store's metric: whether this replica decides alone because Redis is unreachable.

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};

/// The shared store's family. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct SharedMetrics {
    fallback: Gauge,
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
        metrics
    }

    pub fn set_quota_fallback(&self, fallback: bool) {
        self.fallback.set(i64::from(fallback));
    }
}
