//! The metric registry, one per gateway instance (several gateways can live in one test
//! process without sharing counters). Each subsystem declares and registers its own families
//! (`QuotaMetrics::register` in quota/, `GrpcMetrics::register` in grpc/, ...) where the
//! registry is assembled (`startup`); this module holds only the registry, its exposition for
//! the admin port, and what the families share. It imports no subsystem, so they all can
//! import it.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// An empty registry for the gateway's families, all named `scan_gateway_*`, with the one
/// family that belongs to no subsystem: `build_info`, what is running.
pub fn registry() -> Registry {
    let mut registry = Registry::with_prefix("scan_gateway");
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
    registry
}

/// The gateway's metrics as the admin port serves them: the registry once every subsystem has
/// registered its families. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Metrics(Arc<Registry>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Latency buckets shared by the server's and the upstream calls' durations.
pub fn latency_histogram() -> Histogram {
    // 1 ms to ~65 s: upstream calls are slow, unary RPCs fast, streams long (capped here).
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

// === impl Metrics ===

impl Metrics {
    pub fn new(registry: Registry) -> Self {
        Self(Arc::new(registry))
    }

    /// The Prometheus text exposition (OpenMetrics flavour of prometheus-client).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.0);
        out
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
