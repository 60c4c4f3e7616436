//! The idempotency keys' metric: how many keys this replica keeps.

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};

/// The keys' family. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct KeyMetrics {
    keys: Gauge,
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
        metrics
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
