//! A fake OpenTelemetry collector: the OTLP/gRPC `TraceService` on a loopback port, which
//! keeps every span it receives, or answers UNAVAILABLE, or never answers.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::transport::server::TcpIncoming;

/// How the collector answers exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Keeps the spans and answers OK.
    Accept,
    /// Answers UNAVAILABLE (a collector shedding load): the exporter retries, then drops.
    Unavailable,
    /// Never answers (a stuck collector): the exporter's timeout has to end each export.
    Hang,
}

/// A span as received, with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    /// The (trace id, span id) pairs this span links to.
    pub fn links(&self) -> Vec<(String, String)> {
        self.span
            .links
            .iter()
            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
            .collect()
    }

    /// An attribute's value as text (numbers and booleans too).
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
}

#[derive(Clone)]
struct Collector {
    answer: Answer,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    exports: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.exports.fetch_add(1, Ordering::SeqCst);
        match self.answer {
            Answer::Accept => {}
            Answer::Unavailable => return Err(tonic::Status::unavailable("collector overloaded")),
            Answer::Hang => std::future::pending::<()>().await,
        }
        let mut kept = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    kept.push(ReceivedSpan {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running fake collector; stops when dropped.
pub struct FakeCollector {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    exports: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeCollector {
    pub async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let collector = Collector {
            answer,
            spans: Arc::default(),
            exports: Arc::default(),
        };
        let (spans, exports) = (collector.spans.clone(), collector.exports.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        Self {
            addr,
            spans,
            exports,
            task,
        }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for this collector.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Export requests received, answered or not.
    pub fn exports(&self) -> usize {
        self.exports.load(Ordering::SeqCst)
    }

    /// Waits (up to 15 s) until a received span satisfies `found`, then returns all spans.
    pub async fn wait_for(&self, found: impl Fn(&ReceivedSpan) -> bool) -> Vec<ReceivedSpan> {
        for _ in 0..300 {
            let spans = self.spans();
            if spans.iter().any(&found) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let names: Vec<_> = self.spans().into_iter().map(|s| s.span.name).collect();
        panic!("the expected span never reached the collector; received: {names:?}");
    }
}

impl Drop for FakeCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    let AnyValue { value: Some(value) } = value else {
        return None;
    };
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
