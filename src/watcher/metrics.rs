//! The watcher's metrics (issue 5): what it follows, how often it refreshes and at what cost,
//! and how late a status change reaches the streams.

use prometheus_client::{
    metrics::{
        counter::Counter,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// The watcher's families. Cheap to clone; clones share them.
#[derive(Clone, Debug)]
pub struct WatchMetrics {
    actions: Gauge,
    subscribers: Gauge,
    refresh_calls: Counter,
    refreshes: Counter,
    refreshed_per_call: Histogram,
    delay: Histogram,
    panics: Counter,
    outage: Gauge,
    outages: Counter,
}

// === impl WatchMetrics ===

impl WatchMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "watched_actions",
            "Unfinished actions the watcher follows",
            metrics.actions.clone(),
        );
        registry.register(
            "watch_subscribers",
            "Streams subscribed to watched actions",
            metrics.subscribers.clone(),
        );
        registry.register(
            "watch_refreshes",
            "Refreshes of the watched actions",
            metrics.refreshes.clone(),
        );
        registry.register(
            "watch_upstream_calls",
            "Upstream calls made by the watcher's refreshes",
            metrics.refresh_calls.clone(),
        );
        registry.register(
            "watch_actions_per_call",
            "Watched actions refreshed per upstream call",
            metrics.refreshed_per_call.clone(),
        );
        registry.register(
            "watch_panics",
            "Panics of the watcher's loop; each is logged and the loop restarted, its subscribers kept",
            metrics.panics.clone(),
        );
        registry.register(
            "watch_outage",
            "1 while the watcher cannot read the Defender API (an outage its streams ride out)",
            metrics.outage.clone(),
        );
        registry.register(
            "watch_outages",
            "Upstream outages the watcher rode out or is riding out",
            metrics.outages.clone(),
        );
        registry.register_with_unit(
            "watch_update_delay",
            "Time from a status change upstream (lastUpdateDateTimeUtc) to its publication",
            Unit::Seconds,
            metrics.delay.clone(),
        );
        metrics
    }

    pub fn set_watched(&self, actions: usize, subscribers: usize) {
        self.actions.set(i64::try_from(actions).unwrap_or(i64::MAX));
        self.subscribers
            .set(i64::try_from(subscribers).unwrap_or(i64::MAX));
    }

    pub fn record_watch_refresh(&self, calls: u32, actions: usize) {
        self.refreshes.inc();
        self.refresh_calls.inc_by(u64::from(calls));
        if calls > 0 {
            self.refreshed_per_call
                .observe(actions as f64 / f64::from(calls));
        }
    }

    pub fn record_watch_delay(&self, seconds: f64) {
        self.delay.observe(seconds);
    }

    pub fn record_watch_panic(&self) {
        self.panics.inc();
    }

    /// An outage began (`true`) or ended.
    pub fn record_outage(&self, began: bool) {
        self.outage.set(i64::from(began));
        if began {
            self.outages.inc();
        }
    }
}

/// Families in no registry, for tests that do not read them.
impl Default for WatchMetrics {
    fn default() -> Self {
        Self {
            actions: Gauge::default(),
            subscribers: Gauge::default(),
            refresh_calls: Counter::default(),
            refreshes: Counter::default(),
            refreshed_per_call: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            delay: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            panics: Counter::default(),
            outage: Gauge::default(),
            outages: Counter::default(),
        }
    }
}
