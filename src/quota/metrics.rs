//! The quota's metrics (issue 4): calls admitted and refused, the queue, the wait, the calls
//! left per window, and (from the shared store) whether this replica is in fallback; the queue
//! and the wait per priority class.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use super::shared::SharedMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabel {
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaRefusedLabels {
    api: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    api: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaWindowLabels {
    api: &'static str,
    /// The window length in seconds.
    window_seconds: u64,
}

/// The quota's families. Cheap to clone; clones share them.
#[derive(Clone, Debug)]
pub struct QuotaMetrics {
    admitted: Family<ApiLabel, Counter>,
    refused: Family<QuotaRefusedLabels, Counter>,
    queue_length: Family<ApiLabel, Gauge>,
    wait: Family<ApiLabel, Histogram>,
    remaining: Family<QuotaWindowLabels, Gauge>,
    /// From admission to the upstream's answer: the most the margin must cover.
    answered: Family<ApiLabel, Histogram>,
    late: Family<ApiLabel, Counter>,
    class_queue_length: Family<ClassLabels, Gauge>,
    class_wait: Family<ClassLabel, Histogram>,
    /// Registered with the others whatever the store, so a gateway without Redis shows 0.
    shared: SharedMetrics,
}

// === impl QuotaMetrics ===

impl QuotaMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "quota_admitted",
            "Upstream calls admitted by the quota, by API",
            metrics.admitted.clone(),
        );
        registry.register(
            "quota_refused",
            "Upstream calls refused by the quota (deadline, queue_full), by API",
            metrics.refused.clone(),
        );
        registry.register(
            "quota_queue_length",
            "Calls waiting for quota, by API",
            metrics.queue_length.clone(),
        );
        registry.register_with_unit(
            "quota_wait",
            "Time admitted calls waited for quota, by API",
            Unit::Seconds,
            metrics.wait.clone(),
        );
        registry.register(
            "quota_remaining_calls",
            "Calls left in each quota window at the last admission, by API and window length",
            metrics.remaining.clone(),
        );
        registry.register_with_unit(
            "quota_admission_to_answer",
            "Time from a call's admission to the upstream's answer (an upper bound on when the \
             call reached Defender, which the quota margin must cover), by API",
            Unit::Seconds,
            metrics.answered.clone(),
        );
        registry.register(
            "quota_late_answers",
            "Calls answered later than the quota margin after their admission, counted again in \
             the quota from their answer, by API",
            metrics.late.clone(),
        );
        registry.register(
            "quota_class_queue_length",
            "Calls waiting for quota, by API and priority class",
            metrics.class_queue_length.clone(),
        );
        registry.register_with_unit(
            "quota_class_wait",
            "Time admitted calls waited for quota, by priority class",
            Unit::Seconds,
            metrics.class_wait.clone(),
        );
        // The shared store's family, registered here whatever the store.
        Self {
            shared: SharedMetrics::register(registry),
            ..metrics
        }
    }

    /// The shared store's part: a [`super::SharedStore`] takes it.
    pub fn shared(&self) -> SharedMetrics {
        self.shared.clone()
    }

    pub fn record_quota_answered(&self, api: &'static str, seconds: f64, late: bool) {
        self.answered
            .get_or_create(&ApiLabel { api })
            .observe(seconds);
        if late {
            self.late.get_or_create(&ApiLabel { api }).inc();
        }
    }

    pub fn record_quota_admitted(&self, api: &'static str, waited_seconds: f64) {
        self.admitted.get_or_create(&ApiLabel { api }).inc();
        self.wait
            .get_or_create(&ApiLabel { api })
            .observe(waited_seconds);
    }

    pub fn record_quota_refused(&self, api: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&QuotaRefusedLabels { api, reason })
            .inc();
    }

    pub fn record_class_wait(&self, class: &'static str, waited_seconds: f64) {
        self.class_wait
            .get_or_create(&ClassLabel { class })
            .observe(waited_seconds);
    }

    pub fn set_class_queue_length(&self, api: &'static str, class: &'static str, waiting: usize) {
        self.class_queue_length
            .get_or_create(&ClassLabels { api, class })
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    pub fn set_quota_queue_length(&self, api: &'static str, waiting: usize) {
        self.queue_length
            .get_or_create(&ApiLabel { api })
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    pub fn set_quota_remaining(&self, api: &'static str, window: Duration, remaining: u32) {
        self.remaining
            .get_or_create(&QuotaWindowLabels {
                api,
                window_seconds: window.as_secs(),
            })
            .set(i64::from(remaining));
    }
}

/// Families in no registry, for tests that do not read them.
impl Default for QuotaMetrics {
    fn default() -> Self {
        Self {
            admitted: Family::default(),
            refused: Family::default(),
            queue_length: Family::default(),
            wait: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 4.0, 12))
            }),
            remaining: Family::default(),
            // 1 ms to about 65 s.
            answered: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            late: Family::default(),
            class_queue_length: Family::default(),
            class_wait: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 4.0, 12))
            }),
            shared: SharedMetrics::default(),
        }
    }
}
