//! The token cache's metrics: requests to the Entra ID token endpoint, by credential kind and
//! outcome, the credentials' state (the outcome of the latest request), and the time until the
//! cached access token expires.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{MetricType, counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use tokio::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    credential: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The states of `credentials_state`: `unknown` until the first token request ends, then that
/// request's outcome.
const STATES: [&str; 5] = [
    "unknown",
    "success",
    "refused",
    "unavailable",
    "credential_error",
];

/// The token cache's families. Cheap to clone; clones share them.
#[derive(Clone, Debug)]
pub struct TokenMetrics {
    requests: Family<TokenLabels, Counter>,
    state: Family<StateLabel, Gauge>,
    ttl: TokenTtl,
}

impl Default for TokenMetrics {
    fn default() -> Self {
        let metrics = Self {
            requests: Family::default(),
            state: Family::default(),
            ttl: TokenTtl::default(),
        };
        metrics.set_state("unknown");
        metrics
    }
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
        registry.register(
            "credentials_state",
            "1 for the outcome of the latest token request (success, refused, unavailable, \
             credential_error; unknown before the first), 0 for the others",
            metrics.state.clone(),
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
        self.set_state(outcome);
    }

    fn set_state(&self, current: &'static str) {
        for state in STATES {
            self.state
                .get_or_create(&StateLabel { state })
                .set(i64::from(state == current));
        }
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
