//! The scan service's metrics: scans followed to a final status, by that status; streams told
//! their updates are delayed, and ended by an outage that outlasted the ride-out time; reads by
//! where they were answered from.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinalStatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadLabels {
    rpc: &'static str,
    source: &'static str,
}

/// The scan service's family. Cheap to clone; clones share it.
#[derive(Clone, Debug, Default)]
pub struct ScanMetrics {
    finished: Family<FinalStatusLabel, Counter>,
    reads: Family<ReadLabels, Counter>,
    delayed: Counter,
    outage_ends: Counter,
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
        registry.register(
            "reads",
            "GetScan and ListScans reads, by RPC and where they were answered from (watcher, recent, upstream, joined: a call in flight for another read)",
            metrics.reads.clone(),
        );
        registry.register(
            "stream_delays",
            "Streams told that their updates are delayed by an upstream outage",
            metrics.delayed.clone(),
        );
        registry.register(
            "stream_outage_ends",
            "Streams ended UNAVAILABLE because an upstream outage outlasted the ride-out time",
            metrics.outage_ends.clone(),
        );
        metrics
    }

    pub fn record_read(&self, rpc: &'static str, source: &'static str) {
        self.reads.get_or_create(&ReadLabels { rpc, source }).inc();
    }

    pub fn record_stream_delayed(&self) {
        self.delayed.inc();
    }

    pub fn record_stream_outage_end(&self) {
        self.outage_ends.inc();
    }

    pub fn record_scan_finished(&self, status: &str) {
        self.finished
            .get_or_create(&FinalStatusLabel {
                status: status.to_owned(),
            })
            .inc();
    }
}
