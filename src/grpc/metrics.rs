//! The gRPC server's metrics: the calls handled, by method and status code, their duration,
//! and the server streams open now.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::metrics::{code_name, latency_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

/// The server's families. Cheap to clone; clones share them.
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    requests: Family<RpcLabels, Counter>,
    duration: Family<MethodLabel, Histogram>,
    active_streams: Family<MethodLabel, Gauge>,
}

/// Counts a server stream as open until dropped.
pub struct OpenStream {
    gauge: Gauge,
}

// === impl GrpcMetrics ===

impl GrpcMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "grpc_server_requests",
            "gRPC calls handled, by method and status code",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "grpc_server_request_duration",
            "Time from a gRPC call's arrival to its status, by method",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register(
            "grpc_server_active_streams",
            "Server streams (RunScan, WatchScan) open now, by method",
            metrics.active_streams.clone(),
        );
        metrics
    }

    pub fn record_rpc(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.requests
            .get_or_create(&RpcLabels {
                method,
                code: code_name(code),
            })
            .inc();
        self.duration
            .get_or_create(&MethodLabel { method })
            .observe(seconds);
    }

    /// Counts a server stream of `method` as open until the returned guard is dropped.
    pub fn open_stream(&self, method: &'static str) -> OpenStream {
        let gauge = self
            .active_streams
            .get_or_create(&MethodLabel { method })
            .clone();
        gauge.inc();
        OpenStream { gauge }
    }
}

/// Families in no registry, for tests that do not read them.
impl Default for GrpcMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> _),
            active_streams: Family::default(),
        }
    }
}

// === impl OpenStream ===

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::{Metrics, registry},
        outbound::UpstreamMetrics,
    };

    #[test]
    fn renders_counters_with_total_suffix_and_units() {
        let mut registry = registry();
        let grpc = GrpcMetrics::register(&mut registry);
        let upstream = UpstreamMetrics::register(&mut registry);
        let metrics = Metrics::new(registry);
        grpc.record_rpc("StartScan", tonic::Code::NotFound, 0.01);
        upstream.record_upstream("run_antivirus_scan", "201".into(), 0.2);
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
        let mut registry = registry();
        let grpc = GrpcMetrics::register(&mut registry);
        let metrics = Metrics::new(registry);
        grpc.record_rpc("RunScan", tonic::Code::Ok, 0.5);
        let _open = grpc.open_stream("RunScan");
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
