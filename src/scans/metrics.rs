//! The scan service's metric: scans followed to a final status, by that status.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinalStatusLabel {
    status: String,
}

/// The scan service's family. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct ScanMetrics {
    finished: Family<FinalStatusLabel, Counter>,
}

// === impl ScanMetrics ===

impl ScanMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "scans_finished",
            "Scans followed to a final status, by that status",
            metrics.finished.clone(),
        );
        metrics
    }

    pub fn record_scan_finished(&self, status: &str) {
        self.finished
            .get_or_create(&FinalStatusLabel {
                status: status.to_owned(),
            })
            .inc();
    }
}
