//! Prometheus metrics, one registry per gateway instance (several gateways can live in one
//! test process without sharing counters).

use std::sync::{Arc, Mutex, atomic::AtomicU64};

use tokio::time::Instant;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinalStatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    credential: &'static str,
    outcome: &'static str,
}

struct Inner {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabel, Histogram>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: Family<ApiLabel, Histogram>,
    scans_finished: Family<FinalStatusLabel, Counter>,
    token_requests: Family<TokenLabels, Counter>,
    token_ttl: Gauge<f64, AtomicU64>,
    /// When the cached token expires; the TTL gauge is computed from it at scrape time.
    token_expires_at: Mutex<Option<Instant>>,
}

/// The gateway's metrics. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s: upstream calls are slow, unary RPCs fast, streams long (capped here).
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("scan_gateway");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_server_requests",
            "gRPC calls handled, by method and status code",
            rpc_requests.clone(),
        );
        let rpc_duration =
            Family::<MethodLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register_with_unit(
            "grpc_server_request_duration",
            "Time from a gRPC call's arrival to its status, by method",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Calls to the Defender API, by API and HTTP status (or failure kind)",
            upstream_requests.clone(),
        );
        let upstream_duration =
            Family::<ApiLabel, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register_with_unit(
            "upstream_request_duration",
            "Duration of Defender API calls including quota waits, by API",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let scans_finished = Family::<FinalStatusLabel, Counter>::default();
        registry.register(
            "scans_finished",
            "Scans followed to a final status, by that status",
            scans_finished.clone(),
        );
        let token_requests = Family::<TokenLabels, Counter>::default();
        registry.register(
            "token_requests",
            "Requests to the Entra ID token endpoint, by credential kind and outcome",
            token_requests.clone(),
        );
        let token_ttl = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "access_token_ttl",
            "Time until the cached access token expires (0 when there is none)",
            Unit::Seconds,
            token_ttl.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            rpc_requests,
            rpc_duration,
            upstream_requests,
            upstream_duration,
            scans_finished,
            token_requests,
            token_ttl,
            token_expires_at: Mutex::new(None),
        }))
    }

    pub fn record_rpc(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.0
            .rpc_requests
            .get_or_create(&RpcLabels {
                method,
                code: code_name(code),
            })
            .inc();
        self.0
            .rpc_duration
            .get_or_create(&MethodLabel { method })
            .observe(seconds);
    }

    pub fn record_upstream(&self, api: &'static str, status: String, seconds: f64) {
        self.0
            .upstream_requests
            .get_or_create(&UpstreamLabels { api, status })
            .inc();
        self.0
            .upstream_duration
            .get_or_create(&ApiLabel { api })
            .observe(seconds);
    }

    pub fn record_scan_finished(&self, status: &str) {
        self.0
            .scans_finished
            .get_or_create(&FinalStatusLabel {
                status: status.to_owned(),
            })
            .inc();
    }

    pub fn record_token_request(&self, credential: &'static str, outcome: &'static str) {
        self.0
            .token_requests
            .get_or_create(&TokenLabels {
                credential,
                outcome,
            })
            .inc();
    }

    /// Records when the cached token expires (`None`: no token).
    pub fn set_token_expiry(&self, expires_at: Option<Instant>) {
        *self
            .0
            .token_expires_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = expires_at;
    }

    /// The Prometheus text exposition (OpenMetrics flavour of prometheus-client).
    pub fn render(&self) -> String {
        let expires_at = *self
            .0
            .token_expires_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let ttl = expires_at.map_or(0.0, |at| {
            at.saturating_duration_since(Instant::now()).as_secs_f64()
        });
        self.0.token_ttl.set(ttl);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.0.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// gRPC's canonical upper-snake names (`NOT_FOUND`), as in the grpc-status docs.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_total_suffix_and_units() {
        let metrics = Metrics::new();
        metrics.record_rpc("StartScan", tonic::Code::NotFound, 0.01);
        metrics.record_upstream("run_antivirus_scan", "201".into(), 0.2);
        let text = metrics.render();
        assert!(text.contains(
            r#"scan_gateway_grpc_server_requests_total{method="StartScan",code="NOT_FOUND"} 1"#
        ));
        assert!(text.contains(
            r#"scan_gateway_upstream_requests_total{api="run_antivirus_scan",status="201"} 1"#
        ));
        assert!(text.contains("scan_gateway_grpc_server_request_duration_seconds_bucket"));
    }
}
