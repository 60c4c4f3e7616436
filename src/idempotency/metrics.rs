//! The idempotency keys' metrics: how many keys this replica keeps, and how many it wrote back
//! to Redis after Redis lost its data.

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

/// The keys' family. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct KeyMetrics {
    keys: Gauge,
    restored: Counter,
}

// === impl KeyMetrics ===

impl KeyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "idempotency_keys",
            "Idempotency keys this replica keeps (bounded; the oldest are evicted first)",
            metrics.keys.clone(),
        );
        registry.register(
            "idempotency_keys_restored",
            "Idempotency keys this replica wrote back to Redis after Redis lost its data",
            metrics.restored.clone(),
        );
        metrics
    }

    pub fn record_restored(&self, count: usize) {
        self.restored.inc_by(count as u64);
    }

    pub fn set_keys(&self, count: usize) {
        self.keys.set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
impl KeyMetrics {
    pub fn keys(&self) -> i64 {
        self.keys.get()
    }
}
