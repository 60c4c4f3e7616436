//! Telemetry: logs on stderr (JSON lines by default, or text with
//! `SCAN_GATEWAY_LOG_FORMAT=text`; level from `RUST_LOG`, default `info`), spans exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace context propagation.
//!
//! Every log line written inside a call carries that call's `trace_id` and `span_id`, exported
//! or not. The OpenTelemetry layer has its own filter (the gateway's spans and events at
//! `info`), so `RUST_LOG` never cuts a trace in two.

mod logs;
mod otlp;
pub mod propagation;

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::{Layer, Registry, filter::Targets, fmt, prelude::*};

pub use logs::{AUDIT_TARGET, LogFormat};
pub use otlp::{DEFAULT_SERVICE_NAME, TraceSettings, TraceSettingsError};

/// Longest the final span flush may hold up the exit.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps the span pipeline; [`Telemetry::shutdown`] flushes it.
#[must_use = "call shutdown() before exiting, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued and stops the exporter, giving up after [`FLUSH_TIMEOUT`].
    ///
    /// The batch processor's shutdown blocks until its thread has exported, and that export
    /// runs on this runtime's I/O: blocking a worker with it deadlocks a single-worker runtime
    /// (a 1-vCPU pod), so it runs on the blocking pool.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flush =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT));
        match tokio::time::timeout(FLUSH_TIMEOUT + Duration::from_secs(1), flush).await {
            Ok(Ok(Ok(()))) => tracing::debug!("spans flushed"),
            Ok(Ok(Err(err))) => {
                tracing::warn!(error = %err, "could not flush the last spans to the collector")
            }
            Ok(Err(_)) | Err(_) => tracing::warn!("flushing the last spans did not finish in time"),
        }
    }
}

/// Target of the client span of each upstream call: exported with the traces, but at DEBUG
/// for the logs, where it would cost a formatted span per call and add nothing the call's
/// own span and the upstream call's log lines do not say.
pub const UPSTREAM_SPAN_TARGET: &str = "scan_gateway::upstream_call";

/// Installs the global subscriber: logs in `format`, and span export when `traces` is given.
/// Call it inside the tokio runtime (the exporter's channel lives there). If a subscriber is
/// already installed (a test harness), that one is kept and no spans are exported.
pub fn init(
    format: LogFormat,
    default_level: &str,
    traces: Option<&TraceSettings>,
) -> Result<Telemetry, TraceSettingsError> {
    let provider = traces.map(otlp::provider).transpose()?;
    // Only the layers in use: an absent layer (`None`) would still count as interested in
    // every span, and the registry would then record every span of every crate, h2's
    // per-poll trace spans included, for nobody.
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    if let Some(provider) = &provider {
        // Our spans and events only: never the exporter's own (no feedback loop), never the
        // simulator's (it plays Microsoft, not us).
        let targets = Targets::new()
            .with_target("scan_gateway", LevelFilter::INFO)
            .with_target(UPSTREAM_SPAN_TARGET, LevelFilter::DEBUG)
            .with_target("defender_simulator", LevelFilter::OFF)
            .with_target(AUDIT_TARGET, LevelFilter::INFO);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("scan-gateway"))
                .with_threads(false)
                .with_filter(targets)
                .boxed(),
        );
    }
    layers.push(match format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .map_event_format(|inner| logs::WithTraceIds { inner, format })
            .with_filter(logs::filter(default_level))
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .map_event_format(|inner| logs::WithTraceIds { inner, format })
            .with_filter(logs::filter(default_level))
            .boxed(),
    });
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    match provider {
        Some(provider) if !installed => {
            // Nothing was queued, so this returns at once.
            let _ = provider.shutdown();
            Ok(Telemetry { provider: None })
        }
        provider => Ok(Telemetry { provider }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use opentelemetry::trace::Tracer as _;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    };
    use opentelemetry_sdk::trace::Sampler;

    /// Counts the spans it receives.
    #[derive(Clone, Default)]
    struct Collector(Arc<AtomicUsize>);

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let spans: usize = request
                .into_inner()
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            self.0.fetch_add(spans, Ordering::SeqCst);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_flush_at_shutdown_never_blocks_the_only_runtime_thread() {
        // The collector and the exporter's connection run on this one thread: a flush that
        // blocked it would deliver nothing and give up after FLUSH_TIMEOUT.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector::default();
        let received = collector.0.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let settings = TraceSettings {
            endpoint: format!("http://{addr}"),
            sampler: Sampler::AlwaysOn,
        };
        let provider = otlp::provider(&settings).unwrap();
        provider.tracer("test").in_span("last words", |_| {});

        let started = tokio::time::Instant::now();
        Telemetry {
            provider: Some(provider),
        }
        .shutdown()
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(received.load(Ordering::SeqCst), 1);
    }
}

/// An in-process span pipeline for unit tests: the OpenTelemetry layer exporting every
/// finished span into memory, installed for the current thread only.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    use opentelemetry::{Value, trace::TracerProvider as _};
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SimpleSpanProcessor, SpanData, SpanExporter},
    };
    use tracing_subscriber::prelude::*;

    /// The spans finished so far.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct Spans(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Spans {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    impl Spans {
        pub(crate) fn finished(&self) -> Vec<SpanData> {
            self.0.lock().unwrap().clone()
        }
    }

    /// An attribute of `span` as text.
    pub(crate) fn attr(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| match &kv.value {
                Value::String(s) => s.to_string(),
                other => other.to_string(),
            })
    }

    /// Until the guard drops, spans of this thread (and of tasks on a current-thread runtime)
    /// go to the returned [`Spans`].
    pub(crate) fn install() -> (Spans, tracing::subscriber::DefaultGuard) {
        let spans = Spans::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(SimpleSpanProcessor::new(spans.clone()))
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        // A callsite first hit on another test's thread can cache "never" while this thread's
        // subscriber is being registered, and then this test misses its spans. A global
        // subscriber that takes everything makes "never" impossible; other threads' spans
        // still go nowhere, since it has no layer.
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
        });
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        tracing::callsite::rebuild_interest_cache();
        (spans, guard)
    }
}
