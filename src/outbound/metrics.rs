//! The upstream calls' metrics: each logical call to the Defender API (quota waits and resends
//! included), by API and HTTP status or failure kind, and its duration; and every 429 answer,
//! resent ones too (a resend that succeeds hides its 429 from the per-call count).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::metrics::latency_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    api: &'static str,
    /// The HTTP status code, or the kind of failure when there was no answer.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabel {
    api: &'static str,
}

/// The upstream calls' families. Cheap to clone; clones share them.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    requests: Family<UpstreamLabels, Counter>,
    duration: Family<ApiLabel, Histogram>,
    throttled: Family<ApiLabel, Counter>,
}

// === impl UpstreamMetrics ===

impl UpstreamMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "upstream_requests",
            "Calls to the Defender API, by API and HTTP status (or failure kind)",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "upstream_request_duration",
            "Duration of Defender API calls including quota waits, by API",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register(
            "upstream_throttled",
            "429 answers of the Defender API, by API: every exchange, resent ones too (the quota should keep this at 0)",
            metrics.throttled.clone(),
        );
        metrics
    }

    /// One 429 answer (whether the call is then resent or not).
    pub fn record_throttled(&self, api: &'static str) {
        self.throttled.get_or_create(&ApiLabel { api }).inc();
    }

    pub fn record_upstream(&self, api: &'static str, status: String, seconds: f64) {
        self.requests
            .get_or_create(&UpstreamLabels { api, status })
            .inc();
        self.duration
            .get_or_create(&ApiLabel { api })
            .observe(seconds);
    }
}

/// Families in no registry, for tests that do not read them.
impl Default for UpstreamMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            throttled: Family::default(),
        }
    }
}
