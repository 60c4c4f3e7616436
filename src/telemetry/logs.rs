//! Log lines: JSON (one object per event) or text, each carrying the `trace_id` and `span_id`
//! of the current call when there is one.
//!
//! ```text
//! {"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"9c3a5e1f2b7d4a60","timestamp":"2026-11-27T10:14:05.331Z","level":"INFO","fields":{"message":"scan requested","rpc":"RunScan",..},"target":"audit"}
//! 2026-11-27T10:14:05.331Z  WARN scan_gateway::scans: status poll failed; retrying trace_id=4bf9.. span_id=9c3a..
//! ```

use std::{fmt, io::IsTerminal};

use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    filter::{FilterExt, filter_fn},
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::Filter,
    registry::LookupSpan,
};

use super::propagation;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// From `SCAN_GATEWAY_LOG_FORMAT`, or `default` when unset or unknown.
    pub fn from_env(default: LogFormat) -> LogFormat {
        Self::from_setting(
            std::env::var("SCAN_GATEWAY_LOG_FORMAT").ok().as_deref(),
            default,
        )
    }

    /// Text for a person at a terminal (next to `serve --simulate`'s banner), JSON for a log
    /// collector; the default of `from_env`.
    pub fn for_stderr() -> LogFormat {
        if std::io::stderr().is_terminal() {
            LogFormat::Text
        } else {
            LogFormat::Json
        }
    }

    fn from_setting(setting: Option<&str>, default: LogFormat) -> LogFormat {
        match setting {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            _ => default,
        }
    }
}

/// Target of the audit records (one per state-changing call).
pub const AUDIT_TARGET: &str = "audit";

/// What the log layer keeps: events as `RUST_LOG` says (default `default_level`), audit records
/// unless `RUST_LOG` names the `audit` target itself, and spans only with
/// `SCAN_GATEWAY_LOG_SPANS=true`.
///
/// Every line already carries the call's `trace_id` and `span_id` (from the call's trace
/// context, see [`WithTraceIds`]), and the audit record names the call. Keeping the spans for
/// the log layer too would format every call's span fields into JSON and keep them for the
/// call's life: about a fifth of the gateway's CPU per call (`cargo bench --bench hop` under
/// `perf`) and 0.6 KB per open stream.
pub(super) fn filter<S>(default_level: &str) -> impl Filter<S> + Send + Sync + 'static + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let spans = std::env::var("SCAN_GATEWAY_LOG_SPANS").is_ok_and(|v| v == "true" || v == "1");
    filter_from(rust_log.as_deref(), default_level, spans)
}

fn filter_from<S>(
    rust_log: Option<&str>,
    default_level: &str,
    spans: bool,
) -> impl Filter<S> + Send + Sync + 'static + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let env = rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default_level));
    let audit_always = !rust_log.unwrap_or_default().contains(AUDIT_TARGET);
    env.and(filter_fn(move |meta: &Metadata<'_>| {
        spans || !meta.is_span()
    }))
    .or(filter_fn(move |meta: &Metadata<'_>| {
        audit_always && meta.target() == AUDIT_TARGET
    }))
}

/// Wraps an event formatter and adds the current trace and span ids to each line: as the
/// first keys of a JSON object, or as `trace_id=.. span_id=..` at the end of a text line.
pub(super) struct WithTraceIds<F> {
    pub inner: F,
    pub format: LogFormat,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // OpenTelemetry logs some of its own warnings while it holds the context stack, where
        // reading the current context would panic; they belong to no call anyway.
        let ids = if event.metadata().target().starts_with("opentelemetry") {
            None
        } else {
            propagation::current_ids()
        };
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match (self.format, line.strip_prefix('{')) {
            (LogFormat::Json, Some(rest)) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            _ => {
                let body = line.strip_suffix('\n').unwrap_or(&line);
                writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_wins_over_the_default_and_unknown_values_keep_it() {
        for default in [LogFormat::Json, LogFormat::Text] {
            assert_eq!(
                LogFormat::from_setting(Some("json"), default),
                LogFormat::Json
            );
            assert_eq!(
                LogFormat::from_setting(Some("text"), default),
                LogFormat::Text
            );
            assert_eq!(LogFormat::from_setting(Some("yaml"), default), default);
            assert_eq!(LogFormat::from_setting(None, default), default);
        }
    }
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::{fmt, prelude::*};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// JSON lines through the gateway's filter.
    fn filtered_lines(rust_log: Option<&str>, spans: bool, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let layer = fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(move || out.clone())
            .with_filter(filter_from(rust_log, "info", spans));
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
        tracing::dispatcher::with_default(&dispatch, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn spans_reach_the_lines_only_when_asked_and_audit_records_always() {
        let emit = || {
            let span = tracing::info_span!("grpc request", rpc.method = "StartScan");
            let _entered = span.enter();
            tracing::info!("inside");
            tracing::info!(target: AUDIT_TARGET, "audited");
            tracing::debug!("too detailed");
        };
        let plain = filtered_lines(None, false, emit);
        assert!(
            plain.contains("inside") && plain.contains("audited"),
            "{plain}"
        );
        assert!(
            !plain.contains("StartScan") && !plain.contains("too detailed"),
            "{plain}"
        );

        let with_spans = filtered_lines(None, true, emit);
        assert!(
            with_spans.contains("\"rpc.method\":\"StartScan\""),
            "{with_spans}"
        );

        // RUST_LOG=warn still writes audit records, and nothing else here.
        let quiet = filtered_lines(Some("warn"), false, emit);
        assert!(
            quiet.contains("audited") && !quiet.contains("inside"),
            "{quiet}"
        );
    }

    fn lines(format: LogFormat, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let layer = fmt::layer()
            .with_ansi(false)
            .with_writer(move || out.clone());
        let dispatch = match format {
            LogFormat::Json => tracing::Dispatch::new(
                tracing_subscriber::registry().with(
                    layer
                        .json()
                        .map_event_format(|inner| WithTraceIds { inner, format }),
                ),
            ),
            LogFormat::Text => tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(layer.map_event_format(|inner| WithTraceIds { inner, format })),
            ),
        };
        tracing::dispatcher::with_default(&dispatch, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    fn in_a_trace(emit: impl FnOnce()) {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = propagation::local_context(&propagation::extract(&headers));
        let _guard = cx.attach();
        emit();
    }

    #[test]
    fn json_lines_start_with_the_trace_and_span_ids() {
        let out = lines(LogFormat::Json, || {
            in_a_trace(|| tracing::info!(answer = 42, "inside"));
            tracing::info!("outside");
        });
        let mut lines = out.lines();
        let inside: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(inside["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(inside["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(inside["fields"]["answer"], 42);
        let outside: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert!(outside.get("trace_id").is_none(), "{outside}");
        assert_eq!(outside["fields"]["message"], "outside");
    }

    #[test]
    fn text_lines_end_with_the_trace_and_span_ids() {
        let out = lines(LogFormat::Text, || {
            in_a_trace(|| tracing::warn!("inside"));
        });
        let line = out.lines().next().unwrap();
        assert!(line.contains("inside"), "{line}");
        assert!(
            line.contains(" trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id="),
            "{line}"
        );
    }
}
