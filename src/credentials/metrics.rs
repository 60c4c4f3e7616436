//! The token cache's metrics: requests to the Entra ID token endpoint, by credential kind and
//! outcome, and the time until the cached access token expires.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{MetricType, counter::Counter, family::Family},
    registry::{Registry, Unit},
};
use tokio::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    credential: &'static str,
    outcome: &'static str,
}

/// The token cache's families. Cheap to clone; clones share them.
#[derive(Clone, Debug, Default)]
pub struct TokenMetrics {
    requests: Family<TokenLabels, Counter>,
    ttl: TokenTtl,
}

/// A gauge computed at scrape time: the seconds until the cached token expires (0 when there
/// is none), so it counts down between two fetches without anyone setting it.
#[derive(Clone, Debug, Default)]
struct TokenTtl {
    expires_at: Arc<Mutex<Option<Instant>>>,
}

// === impl TokenMetrics ===

impl TokenMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "token_requests",
            "Requests to the Entra ID token endpoint, by credential kind and outcome",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "access_token_ttl",
            "Time until the cached access token expires (0 when there is none)",
            Unit::Seconds,
            metrics.ttl.clone(),
        );
        metrics
    }

    pub fn record_token_request(&self, credential: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&TokenLabels {
                credential,
                outcome,
            })
            .inc();
    }

    /// Records when the cached token expires (`None`: no token).
    pub fn set_token_expiry(&self, expires_at: Option<Instant>) {
        *self
            .ttl
            .expires_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = expires_at;
    }
}

// === impl TokenTtl ===

impl EncodeMetric for TokenTtl {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let expires_at = *self.expires_at.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = expires_at.map_or(0.0, |at| {
            at.saturating_duration_since(Instant::now()).as_secs_f64()
        });
        // As a `Gauge<f64>` encodes its value.
        encoder.encode_gauge(&ttl)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}
