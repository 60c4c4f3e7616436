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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaRefusedLabels {
    api: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaWindowLabels {
    api: &'static str,
    /// The window length in seconds.
    window_seconds: u64,
}

/// The quota's metrics (issue 4).
struct QuotaFamilies {
    admitted: Family<ApiLabel, Counter>,
    refused: Family<QuotaRefusedLabels, Counter>,
    queue_length: Family<ApiLabel, Gauge>,
    wait: Family<ApiLabel, Histogram>,
    remaining: Family<QuotaWindowLabels, Gauge>,
    fallback: Gauge,
}

impl QuotaFamilies {
    fn register(registry: &mut Registry) -> Self {
        let families = Self {
            admitted: Family::default(),
            refused: Family::default(),
            queue_length: Family::default(),
            wait: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 4.0, 12,
                ))
            }),
            remaining: Family::default(),
            fallback: Gauge::default(),
        };
        registry.register(
            "quota_admitted",
            "Upstream calls admitted by the quota, by API",
            families.admitted.clone(),
        );
        registry.register(
            "quota_refused",
            "Upstream calls refused by the quota (deadline, queue_full), by API",
            families.refused.clone(),
        );
        registry.register(
            "quota_queue_length",
            "Calls waiting for quota, by API",
            families.queue_length.clone(),
        );
        registry.register_with_unit(
            "quota_wait",
            "Time admitted calls waited for quota, by API",
            Unit::Seconds,
            families.wait.clone(),
        );
        registry.register(
            "quota_remaining_calls",
            "Calls left in each quota window at the last admission, by API and window length",
            families.remaining.clone(),
        );
        registry.register(
            "quota_fallback",
            "1 while Redis is unreachable and this replica uses its share of the quota",
            families.fallback.clone(),
        );
        families
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The server's own metrics (issue 6): what is running, and how many streams are open.
struct ServerFamilies {
    active_streams: Family<MethodLabel, Gauge>,
    refused: Family<RefusedLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabel {
    reason: &'static str,
}

impl ServerFamilies {
    fn register(registry: &mut Registry) -> Self {
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Always 1; the version of the running gateway is in the label",
            build_info,
        );
        let families = Self {
            active_streams: Family::default(),
            refused: Family::default(),
        };
        registry.register(
            "grpc_server_refused",
            "ScanService calls refused before their handler: unauthenticated, \
             permission_denied, caller_rate, caller_streams",
            families.refused.clone(),
        );
        registry.register(
            "grpc_server_active_streams",
            "Server streams (RunScan, WatchScan) open now, by method",
            families.active_streams.clone(),
        );
        families
    }
}

/// Counts a server stream as open until dropped.
pub struct OpenStream {
    gauge: Gauge,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The watcher's metrics (issue 5).
struct WatchFamilies {
    actions: Gauge,
    subscribers: Gauge,
    refresh_calls: Counter,
    refreshes: Counter,
    refreshed_per_call: Histogram,
    delay: Histogram,
}

impl WatchFamilies {
    fn register(registry: &mut Registry) -> Self {
        let families = Self {
            actions: Gauge::default(),
            subscribers: Gauge::default(),
            refresh_calls: Counter::default(),
            refreshes: Counter::default(),
            refreshed_per_call: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 8),
            ),
            delay: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.05, 2.0, 14,
            )),
        };
        registry.register(
            "watched_actions",
            "Unfinished actions the watcher follows",
            families.actions.clone(),
        );
        registry.register(
            "watch_subscribers",
            "Streams subscribed to watched actions",
            families.subscribers.clone(),
        );
        registry.register(
            "watch_refreshes",
            "Refreshes of the watched actions",
            families.refreshes.clone(),
        );
        registry.register(
            "watch_upstream_calls",
            "Upstream calls made by the watcher's refreshes",
            families.refresh_calls.clone(),
        );
        registry.register(
            "watch_actions_per_call",
            "Watched actions refreshed per upstream call",
            families.refreshed_per_call.clone(),
        );
        registry.register_with_unit(
            "watch_update_delay",
            "Time from a status change upstream (lastUpdateDateTimeUtc) to its publication",
            Unit::Seconds,
            families.delay.clone(),
        );
        families
    }
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
    quota: QuotaFamilies,
    watch: WatchFamilies,
    server: ServerFamilies,
}

/// The gateway's metrics. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

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
        let quota = QuotaFamilies::register(&mut registry);
        let watch = WatchFamilies::register(&mut registry);
        let server = ServerFamilies::register(&mut registry);
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
            quota,
            watch,
            server,
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

    /// A call refused by the server's layers (authentication, policy, caller limits).
    pub fn record_refused(&self, reason: &'static str) {
        self.0
            .server
            .refused
            .get_or_create(&RefusedLabel { reason })
            .inc();
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

    pub fn record_quota_admitted(&self, api: &'static str, waited_seconds: f64) {
        self.0.quota.admitted.get_or_create(&ApiLabel { api }).inc();
        self.0
            .quota
            .wait
            .get_or_create(&ApiLabel { api })
            .observe(waited_seconds);
    }

    pub fn record_quota_refused(&self, api: &'static str, reason: &'static str) {
        self.0
            .quota
            .refused
            .get_or_create(&QuotaRefusedLabels { api, reason })
            .inc();
    }

    pub fn set_quota_queue_length(&self, api: &'static str, waiting: usize) {
        self.0
            .quota
            .queue_length
            .get_or_create(&ApiLabel { api })
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    pub fn set_quota_remaining(
        &self,
        api: &'static str,
        window: std::time::Duration,
        remaining: u32,
    ) {
        self.0
            .quota
            .remaining
            .get_or_create(&QuotaWindowLabels {
                api,
                window_seconds: window.as_secs(),
            })
            .set(i64::from(remaining));
    }

    pub fn set_watched(&self, actions: usize, subscribers: usize) {
        let watch = &self.0.watch;
        watch
            .actions
            .set(i64::try_from(actions).unwrap_or(i64::MAX));
        watch
            .subscribers
            .set(i64::try_from(subscribers).unwrap_or(i64::MAX));
    }

    pub fn record_watch_refresh(&self, calls: u32, actions: usize) {
        let watch = &self.0.watch;
        watch.refreshes.inc();
        watch.refresh_calls.inc_by(u64::from(calls));
        if calls > 0 {
            watch
                .refreshed_per_call
                .observe(actions as f64 / f64::from(calls));
        }
    }

    pub fn record_watch_delay(&self, seconds: f64) {
        self.0.watch.delay.observe(seconds);
    }

    pub fn set_quota_fallback(&self, fallback: bool) {
        self.0.quota.fallback.set(i64::from(fallback));
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

impl Metrics {
    /// Counts a server stream of `method` as open until the returned guard is dropped.
    pub fn open_stream(&self, method: &'static str) -> OpenStream {
        let gauge = self
            .0
            .server
            .active_streams
            .get_or_create(&MethodLabel { method })
            .clone();
        gauge.inc();
        OpenStream { gauge }
    }

    /// The Prometheus text format (`text/plain; version=0.0.4`), which `promtool check
    /// metrics` and scrapers that do not ask for OpenMetrics read.
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }
}

/// Rewrites prometheus-client's OpenMetrics exposition in the classic text format: a counter
/// family is named with its `_total` suffix, and `# UNIT` and `# EOF` lines go. (Neither
/// exemplars nor info, stateset or gaugehistogram families are used here.)
fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), kind),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take().and_then(|h| h.split_once(' ')) {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
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

    #[test]
    fn the_text_format_names_counters_with_total_and_drops_openmetrics_lines() {
        let metrics = Metrics::new();
        metrics.record_rpc("RunScan", tonic::Code::Ok, 0.5);
        let _open = metrics.open_stream("RunScan");
        let text = metrics.render_text();
        assert!(text.contains("# TYPE scan_gateway_grpc_server_requests_total counter\n"));
        assert!(text.contains("# HELP scan_gateway_grpc_server_requests_total gRPC calls"));
        assert!(
            text.contains("# TYPE scan_gateway_grpc_server_request_duration_seconds histogram\n")
        );
        assert!(text.contains(r#"scan_gateway_grpc_server_active_streams{method="RunScan"} 1"#));
        assert!(text.contains(r#"scan_gateway_build_info{version=""#));
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
        drop(_open);
        assert!(
            metrics
                .render_text()
                .contains(r#"scan_gateway_grpc_server_active_streams{method="RunScan"} 0"#)
        );
    }
}
