//! `ScanService`: each handler parses its request, calls [`Scans`], and converts the answer.
//! The two streaming calls are built in [`super::stream`].

use std::{pin::Pin, sync::Arc};

use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{
    audit::AuditRecord,
    convert, deadline_of, pb,
    stream::{StreamCall, stream},
};
use crate::{
    domain::{CancelRequest, ListQuery, ScanRequest},
    error::Error,
    grpc::GrpcMetrics,
    scans::{Scans, Started, WaitNotice},
    security::{Caller, MaxPriority},
    upstream::{CallContext, QuotaCaller},
};

/// `base` in the quota class `raw` asks for, if the caller's policy rule allows it.
fn in_class(
    mut base: CallContext,
    raw: i32,
    caller: Option<&Caller>,
    allowed: Option<MaxPriority>,
) -> Result<CallContext, Error> {
    let requested = convert::priority(raw)?;
    if let Some(MaxPriority(allowed)) = allowed
        && requested < allowed
    {
        return Err(Error::PriorityNotAllowed {
            caller: caller.map_or_else(|| "unauthenticated".to_owned(), |c| c.0.clone()),
            requested: requested.as_str(),
            allowed: allowed.as_str(),
        });
    }
    base.caller
        .get_or_insert_with(QuotaCaller::gateway)
        .priority = requested;
    Ok(base)
}

/// The upstream context of a call: its deadline and its caller (set by the limits layer).
fn call_context<T>(request: &Request<T>) -> CallContext {
    CallContext {
        deadline: deadline_of(request),
        observer: None,
        caller: request.extensions().get::<QuotaCaller>().cloned(),
        key_owner: request
            .extensions()
            .get::<Caller>()
            .map(|caller| Arc::from(caller.0.as_str())),
    }
}

/// A server stream of `T`.
pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC face of [`Scans`].
pub struct ScanServiceImpl {
    scans: Scans,
    metrics: GrpcMetrics,
}

impl ScanServiceImpl {
    pub fn new(scans: Scans, metrics: GrpcMetrics) -> Self {
        Self { scans, metrics }
    }

    /// Runs a unary handler and records its outcome.
    async fn unary<T>(
        &self,
        method: &'static str,
        handler: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = handler.await.map(Response::new).map_err(Status::from);
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics
            .record_rpc(method, code, started.elapsed().as_secs_f64());
        result
    }

    fn invalid<T>(&self, method: &'static str, err: Error) -> Result<T, Status> {
        let status = Status::from(err);
        self.metrics.record_rpc(method, status.code(), 0.0);
        Err(status)
    }
}

#[tonic::async_trait]
impl pb::scan_service_server::ScanService for ScanServiceImpl {
    type RunScanStream = EventStream<pb::RunScanResponse>;
    type WatchScanStream = EventStream<pb::WatchScanResponse>;

    async fn run_scan(
        &self,
        request: Request<pb::RunScanRequest>,
    ) -> Result<Response<Self::RunScanStream>, Status> {
        const METHOD: &str = "RunScan";
        let base = call_context(&request);
        let r = request.get_ref();
        let audit = AuditRecord::scan(
            METHOD,
            &request,
            &r.machine_id,
            r.scan_type,
            &r.comment,
            &r.request_id,
        );
        let caller = request.extensions().get::<Caller>().cloned();
        let allowed = request.extensions().get::<MaxPriority>().copied();
        let r = request.into_inner();
        let checked = ScanRequest::try_from(&r).and_then(|parsed| {
            in_class(base, r.priority, caller.as_ref(), allowed).map(|base| (parsed, base))
        });
        let (parsed, base) = match checked {
            Ok(checked) => checked,
            Err(err) => {
                let refused = self.invalid(METHOD, err);
                if let Err(status) = &refused {
                    audit.finish(status.code(), None);
                }
                return refused;
            }
        };
        let call = StreamCall {
            method: METHOD,
            base,
            audit: Some(audit),
            start: move |scans: Scans, ctx: CallContext, notice: WaitNotice| async move {
                scans.start_with(&parsed, &ctx, notice).await
            },
        };
        let stream = stream(&self.scans, &self.metrics, call, |update, reused| {
            pb::RunScanResponse {
                update: Some(update),
                reused,
            }
        });
        Ok(Response::new(stream))
    }

    async fn start_scan(
        &self,
        request: Request<pb::StartScanRequest>,
    ) -> Result<Response<pb::StartScanResponse>, Status> {
        let base = call_context(&request);
        let r = request.get_ref();
        let audit = AuditRecord::scan(
            "StartScan",
            &request,
            &r.machine_id,
            r.scan_type,
            &r.comment,
            &r.request_id,
        );
        let caller = request.extensions().get::<Caller>().cloned();
        let allowed = request.extensions().get::<MaxPriority>().copied();
        let r = request.into_inner();
        let result = self
            .unary("StartScan", async {
                let parsed = ScanRequest::try_from(&r)?;
                let base = in_class(base, r.priority, caller.as_ref(), allowed)?;
                let ctx = &base;
                let Started { action, reused } = self.scans.start(&parsed, ctx).await?;
                Ok(pb::StartScanResponse {
                    action: Some(convert::action(action)),
                    reused,
                })
            })
            .await;
        audit.finish_unary(&result, |r| r.action.as_ref());
        result
    }

    async fn get_scan(
        &self,
        request: Request<pb::GetScanRequest>,
    ) -> Result<Response<pb::GetScanResponse>, Status> {
        let base = call_context(&request);
        self.unary("GetScan", async {
            let id = convert::action_id(&request.get_ref().action_id)?;
            let ctx = &base;
            let (action, observed_at) = self.scans.read(&id, ctx, request.get_ref().fresh).await?;
            Ok(pb::GetScanResponse {
                action: Some(convert::action(action)),
                observed_at: Some(convert::timestamp(observed_at)),
            })
        })
        .await
    }

    async fn watch_scan(
        &self,
        request: Request<pb::WatchScanRequest>,
    ) -> Result<Response<Self::WatchScanStream>, Status> {
        const METHOD: &str = "WatchScan";
        let base = call_context(&request);
        let id = match convert::action_id(&request.get_ref().action_id) {
            Ok(id) => id,
            Err(err) => return self.invalid(METHOD, err),
        };
        let call = StreamCall {
            method: METHOD,
            base,
            audit: None,
            start: move |scans: Scans, ctx: CallContext, _: WaitNotice| async move {
                let action = scans.watch_start(&id, &ctx).await?;
                // Watching names an existing action: nothing is started, nothing reused.
                Ok(Started {
                    action,
                    reused: false,
                })
            },
        };
        let stream = stream(&self.scans, &self.metrics, call, |update, _| {
            pb::WatchScanResponse {
                update: Some(update),
            }
        });
        Ok(Response::new(stream))
    }

    async fn cancel_scan(
        &self,
        request: Request<pb::CancelScanRequest>,
    ) -> Result<Response<pb::CancelScanResponse>, Status> {
        let base = call_context(&request);
        let audit = AuditRecord::cancel(&request);
        let result = self
            .unary("CancelScan", async {
                let parsed = CancelRequest::try_from(request.get_ref())?;
                let ctx = &base;
                let action = self.scans.cancel(&parsed, ctx).await?;
                Ok(pb::CancelScanResponse {
                    action: Some(convert::action(action)),
                })
            })
            .await;
        audit.finish_unary(&result, |r| r.action.as_ref());
        result
    }

    async fn list_scans(
        &self,
        request: Request<pb::ListScansRequest>,
    ) -> Result<Response<pb::ListScansResponse>, Status> {
        let base = call_context(&request);
        self.unary("ListScans", async {
            let query = ListQuery::try_from(request.get_ref())?;
            let ctx = &base;
            let page = self.scans.list(&query, ctx).await?;
            Ok(pb::ListScansResponse {
                actions: page.actions.into_iter().map(convert::action).collect(),
                next_page_token: page
                    .next_skip
                    .map(convert::next_page_token)
                    .unwrap_or_default(),
                observed_at: Some(convert::timestamp(page.observed_at)),
            })
        })
        .await
    }
}
