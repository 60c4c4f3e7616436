//! The response stream of `RunScan` and `WatchScan`.
//!
//! The start (creating the scan, or reading the watched action) runs in a short task of its
//! own, so a scan request, once made, finishes and is audited even if the caller leaves
//! mid-way; its quota waits come back as `queued` events. Then the stream pulls a
//! [`Follower`] directly from the response body: no task and no channel per followed stream,
//! so an open stream costs little more than its HTTP/2 stream and the watcher's receiver, and
//! a slow caller just gets the newest status when it reads again.
//!
//! The start runs in the call's span and trace context, so its upstream calls belong to the
//! call's trace; each later step runs in the call's span (for the watcher's span links).

use std::sync::Arc;

use futures_util::stream;
use opentelemetry::context::FutureExt as _;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tonic::{Code, Status};
use tracing::Instrument;

use super::{audit::AuditRecord, convert, pb, service::EventStream, status::code_of};
use crate::{
    error::Error,
    grpc::metrics::{GrpcMetrics, OpenStream},
    scans::{Follower, ScanEvent, Scans, Started, WaitNotice},
    upstream::{CallContext, QueueObserver},
};

/// `queued` (and `waiting`) events buffered while a start waits for quota (or for a running
/// scan); older ones are dropped when the caller is behind (the next one says more).
const QUEUED_BUFFER: usize = 4;

/// What a stream call needs to start and follow its action.
pub(super) struct StreamCall<F> {
    pub method: &'static str,
    pub base: CallContext,
    /// For calls that start a scan: written once the start has succeeded or failed.
    pub audit: Option<AuditRecord>,
    pub start: F,
}

/// Records the call's outcome when the stream ends or is dropped (caller gone: CANCELLED).
struct Outcome {
    method: &'static str,
    metrics: GrpcMetrics,
    started: Instant,
    code: Option<Code>,
    _open: OpenStream,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        self.metrics
            .record_rpc(self.method, code, self.started.elapsed().as_secs_f64());
    }
}

enum Phase {
    Starting {
        start: JoinHandle<Result<Started, Error>>,
        queued: mpsc::Receiver<ScanEvent>,
    },
    Following(Follower),
    Done,
}

struct State {
    phase: Phase,
    scans: Scans,
    base: CallContext,
    outcome: Outcome,
    /// Set when the start answered with a scan it did not create, until the first action
    /// event carries it.
    reused: bool,
}

impl State {
    /// The next message of the stream, or `None` at its end.
    async fn step(&mut self) -> Option<Result<ScanEvent, Status>> {
        loop {
            match &mut self.phase {
                Phase::Starting { start, queued } => {
                    tokio::select! {
                        biased;
                        Some(event) = queued.recv() => return Some(Ok(event)),
                        joined = start => match joined {
                            Ok(Ok(Started { action, reused })) => {
                                self.reused = reused;
                                self.phase = Phase::Following(self.scans.follow(action, &self.base));
                            }
                            Ok(Err(err)) => return Some(Err(self.fail(err))),
                            Err(join) => {
                                tracing::error!(error = %join, "the stream's start task failed");
                                return Some(Err(self.fail(Error::StartInterrupted)));
                            }
                        },
                    }
                }
                Phase::Following(follower) => {
                    return match follower.next().await {
                        Some(Ok(event)) => Some(Ok(event)),
                        Some(Err(err)) => Some(Err(self.fail(err))),
                        None => {
                            self.outcome.code = Some(Code::Ok);
                            self.phase = Phase::Done;
                            None
                        }
                    };
                }
                Phase::Done => return None,
            }
        }
    }

    fn fail(&mut self, err: Error) -> Status {
        let status = Status::from(err);
        self.outcome.code = Some(status.code());
        self.phase = Phase::Done;
        status
    }
}

/// The stream of `call`: `start` yields the first action (creating it if need be), then the
/// stream follows it. `wrap` builds the RPC's response message from an update and whether it
/// is the first action of a scan the call did not create (`reused`).
pub(super) fn stream<T, S, F>(
    scans: &Scans,
    metrics: &GrpcMetrics,
    call: StreamCall<S>,
    wrap: fn(pb::ScanUpdate, bool) -> T,
) -> EventStream<T>
where
    S: FnOnce(Scans, CallContext, WaitNotice) -> F + Send + 'static,
    F: Future<Output = Result<Started, Error>> + Send + 'static,
    T: Send + 'static,
{
    let StreamCall {
        method,
        base,
        audit,
        start,
    } = call;
    let outcome = Outcome {
        method,
        metrics: metrics.clone(),
        started: Instant::now(),
        code: None,
        _open: metrics.open_stream(method),
    };
    let span = tracing::Span::current();
    let otel = opentelemetry::Context::current();

    let (queued_tx, queued) = mpsc::channel(QUEUED_BUFFER);
    // The stream's receiver goes with the caller: a start waiting for a running scan stops
    // waiting when the caller leaves.
    let notice = WaitNotice::new(queued_tx.clone());
    let utc = scans.clone();
    let observer = QueueObserver(Arc::new(move |position, at| {
        // Best effort: a full buffer means the caller is behind; the next event will do.
        let _ = queued_tx.try_send(ScanEvent::Queued {
            position,
            estimated_start: utc.utc_at(at),
        });
    }));
    let ctx = CallContext {
        observer: Some(observer),
        ..base.clone()
    };
    let starting = start(scans.clone(), ctx, notice);
    let start = tokio::spawn(
        async move {
            let result = starting.await;
            if let Some(audit) = audit {
                match &result {
                    Ok(Started { action, .. }) => {
                        audit.finish(Code::Ok, Some((&action.id, &action.machine_id)));
                    }
                    Err(err) => audit.finish(code_of(err), None),
                }
            }
            result
        }
        .instrument(span.clone())
        .with_context(otel.clone()),
    );
    let otel_steps = otel;

    let state = State {
        phase: Phase::Starting { start, queued },
        scans: scans.clone(),
        base,
        outcome,
        reused: false,
    };
    // Following makes no upstream call (the watcher does, with span links to this call); the
    // trace context is for the ids on the steps' log lines (a refusal logged at the end).
    Box::pin(stream::unfold(state, move |mut state| {
        let otel = otel_steps.clone();
        async move {
            let message = state.step().await?;
            let reused =
                matches!(message, Ok(ScanEvent::Action(_))) && std::mem::take(&mut state.reused);
            Some((
                message.map(|event| wrap(convert::update(event), reused)),
                state,
            ))
        }
        .instrument(span.clone())
        .with_context(otel)
    }))
}
