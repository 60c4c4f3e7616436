//! Span export over OTLP/gRPC, configured by the standard `OTEL_*` variables.
//!
//! Export is on only when an endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
//! `OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise no exporter and no OpenTelemetry layer exist.
//! Finished spans go through a batch processor whose queue is bounded (`OTEL_BSP_MAX_QUEUE_SIZE`,
//! default 2048): a collector that is down or slow costs dropped spans, never a slower call.

use opentelemetry::{Key, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider},
};

/// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "scan-gateway";

/// Where and what to export.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    pub sampler: Sampler,
}

/// A tracing variable that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceSettingsError {
    #[error("invalid {variable}: {reason}")]
    Invalid {
        variable: &'static str,
        reason: String,
    },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

fn invalid(variable: &'static str, reason: impl Into<String>) -> TraceSettingsError {
    TraceSettingsError::Invalid {
        variable,
        reason: reason.into(),
    }
}

impl TraceSettings {
    /// From the process environment; `None` means no export.
    pub fn from_env() -> Result<Option<Self>, TraceSettingsError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// From `var` (the environment in production); `None` means no export: no endpoint,
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TraceSettingsError> {
        let var = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(invalid(
                    "OTEL_TRACES_EXPORTER",
                    format!("`{other}` is not supported (use `otlp` or `none`)"),
                ));
            }
        }
        let (variable, endpoint) = match var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(endpoint) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
            None => match var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(endpoint) => ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                None => return Ok(None),
            },
        };
        check_endpoint(variable, &endpoint)?;
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = var(variable)
                && protocol != "grpc"
            {
                return Err(invalid(
                    variable,
                    format!("`{protocol}`: only `grpc` (OTLP/gRPC) is supported"),
                ));
            }
        }
        let sampler = sampler(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        Ok(Some(Self { endpoint, sampler }))
    }
}

fn check_endpoint(variable: &'static str, endpoint: &str) -> Result<(), TraceSettingsError> {
    let url = url::Url::parse(endpoint)
        .map_err(|err| invalid(variable, format!("`{endpoint}` is not a URL: {err}")))?;
    match url.scheme() {
        "http" if url.host().is_some() => Ok(()),
        "https" => Err(invalid(
            variable,
            format!(
                "`{endpoint}`: this build exports over plain OTLP/gRPC only; use http:// to a \
                 collector in the cluster or on the node"
            ),
        )),
        _ => Err(invalid(
            variable,
            format!("`{endpoint}` must be an http:// URL such as http://otel-collector:4317"),
        )),
    }
}

/// The sampler of `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default
/// `parentbased_always_on`), refusing what the SDK would silently replace.
fn sampler(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, TraceSettingsError> {
    let ratio = || -> Result<f64, TraceSettingsError> {
        let Some(raw) = arg else { return Ok(1.0) };
        match raw.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(invalid(
                "OTEL_TRACES_SAMPLER_ARG",
                format!("`{raw}` is not a ratio between 0 and 1"),
            )),
        }
    };
    let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
    Ok(match name.unwrap_or("parentbased_always_on") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => parent_based(Sampler::AlwaysOn),
        "parentbased_always_off" => parent_based(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent_based(Sampler::TraceIdRatioBased(ratio()?)),
        other => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                format!(
                    "`{other}` is not supported (always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                ),
            ));
        }
    })
}

/// The tracer provider: OTLP/gRPC exporter behind a bounded batch processor. Must be called
/// inside the tokio runtime (the exporter's channel lives on it).
pub(super) fn provider(settings: &TraceSettings) -> Result<SdkTracerProvider, TraceSettingsError> {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.clone())
        .build()
        .map_err(|err| TraceSettingsError::Exporter(err.to_string()))?;
    // Queue size, batch size and delay follow OTEL_BSP_*; a full queue drops spans.
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(settings.sampler.clone())
        .with_resource(resource())
        .build())
}

/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` as the SDK reads them, with our name and
/// version where they say nothing.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let mut builder = Resource::builder();
    let named = detected
        .get(&Key::new("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if !named {
        builder = builder.with_service_name(DEFAULT_SERVICE_NAME);
    }
    if detected.get(&Key::new("service.version")).is_none() {
        builder =
            builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<TraceSettings>, TraceSettingsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TraceSettings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert!(settings(&[]).unwrap().is_none());
        assert!(settings(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")];
        assert!(settings(&on).unwrap().is_some());
        let off = [on[0], ("OTEL_SDK_DISABLED", "true")];
        assert!(settings(&off).unwrap().is_none());
        let off = [on[0], ("OTEL_TRACES_EXPORTER", "none")];
        assert!(settings(&off).unwrap().is_none());
    }

    #[test]
    fn the_traces_endpoint_wins_over_the_generic_one() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.endpoint, "http://traces:4317");
    }

    #[test]
    fn samplers_follow_the_spec_names() {
        let with = |name: &str, arg: Option<&str>| {
            let mut vars = vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_TRACES_SAMPLER", name),
            ];
            if let Some(arg) = arg {
                vars.push(("OTEL_TRACES_SAMPLER_ARG", arg));
            }
            settings(&vars).map(|s| format!("{:?}", s.unwrap().sampler))
        };
        assert_eq!(
            with("parentbased_traceidratio", Some("0.25")).unwrap(),
            "ParentBased(TraceIdRatioBased(0.25))"
        );
        assert_eq!(with("always_off", None).unwrap(), "AlwaysOff");
        assert_eq!(
            with("traceidratio", None).unwrap(),
            "TraceIdRatioBased(1.0)"
        );
        let err = with("parentbased_traceidratio", Some("1.5")).unwrap_err();
        assert!(err.to_string().contains("OTEL_TRACES_SAMPLER_ARG"), "{err}");
        let err = with("jaeger_remote", None).unwrap_err();
        assert!(err.to_string().contains("OTEL_TRACES_SAMPLER"), "{err}");
    }

    #[test]
    fn unusable_endpoints_and_protocols_are_refused_with_the_variable() {
        let err = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317")]).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        let err = settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            "{err}"
        );
        let err = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("grpc"), "{err}");
    }
}
