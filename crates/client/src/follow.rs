//! A scan stream that resumes by itself. When the gateway serving it shuts down, the connection
//! drops, or an upstream outage outlasts the gateway's ride-out, the stream goes on with
//! `WatchScan` for the action it was following (through the same channel, which reconnects,
//! so on another replica behind a Service), skips the update the caller already has, and ends
//! only with the scan's final status, a failure that retrying cannot fix, the caller's
//! deadline, or after [`ResumePolicy::max_resumes`] resumes. Before its action is known, a
//! `RunScan` is resumed only when it has a `request_id`: the same key returns the same scan,
//! where a second request without one could start a second scan.

use std::time::Duration;

use futures_util::{Stream, stream};
use tokio::time::Instant;
use tonic::{Status, Streaming, client::GrpcService};

use crate::{
    Body, Error, ErrorKind,
    pb::{self, scan_service_client::ScanServiceClient, scan_update::Event},
};

/// How a stream resumes.
#[derive(Debug, Clone)]
pub struct ResumePolicy {
    /// Most resumes in one stream's life (each attempt counts).
    pub max_resumes: u32,
    /// The wait before the first attempt; doubled each attempt, up to `max_backoff`. A wait
    /// the gateway asked for (`RetryInfo`) is kept when longer.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for ResumePolicy {
    fn default() -> Self {
        Self {
            max_resumes: 20,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// One item of a scan stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The request waits for the Defender API's quota.
    Queued(pb::Queued),
    /// A less thorough scan running on the machine holds the requested one back.
    Waiting(pb::Waiting),
    /// Status updates are held up by an upstream outage; the stream keeps its place.
    Delayed(pb::Delayed),
    /// The action, once per status change. `reused`: the action was already running and this
    /// request did not create it (first action of a `RunScan` only).
    Action {
        action: pb::MachineAction,
        reused: bool,
    },
    /// The stream broke and is being resumed (`attempt` counts from 1); `reason` says why.
    Resumed { reason: String, attempt: u32 },
}

/// A scan's updates, resumed across gateway restarts and dropped connections.
pub type ScanStream = std::pin::Pin<Box<dyn Stream<Item = Result<Update, Error>> + Send>>;

/// The stream of one `RunScan` (with `start`) or `WatchScan` (of `action_id`).
pub(crate) fn follow<T>(
    client: ScanServiceClient<T>,
    start: Option<pb::RunScanRequest>,
    action_id: Option<String>,
    timeout: Option<Duration>,
    policy: ResumePolicy,
) -> ScanStream
where
    T: GrpcService<tonic::body::Body> + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let follow = Follow {
        client,
        start,
        action_id,
        last: None,
        deadline: timeout.map(|t| Instant::now() + t),
        policy,
        resumes: 0,
        open: None,
        wait: None,
        resumed: false,
        done: false,
    };
    Box::pin(stream::unfold(follow, |mut follow| async move {
        let item = follow.next().await?;
        Some((item, follow))
    }))
}

struct Follow<T> {
    client: ScanServiceClient<T>,
    /// The `RunScan` request, until its action is known.
    start: Option<pb::RunScanRequest>,
    action_id: Option<String>,
    /// The status of the last action update delivered.
    last: Option<pb::ActionStatus>,
    deadline: Option<Instant>,
    policy: ResumePolicy,
    resumes: u32,
    open: Option<Open>,
    /// Waited before the next attempt to open.
    wait: Option<Duration>,
    /// The first action update after a resume may repeat the last one delivered.
    resumed: bool,
    done: bool,
}

enum Open {
    Run(Streaming<pb::RunScanResponse>),
    Watch(Streaming<pb::WatchScanResponse>),
}

impl Open {
    async fn next(&mut self) -> Result<Option<(Option<Event>, bool)>, Status> {
        Ok(match self {
            Open::Run(stream) => stream
                .message()
                .await?
                .map(|m| (m.update.and_then(|u| u.event), m.reused)),
            Open::Watch(stream) => stream
                .message()
                .await?
                .map(|m| (m.update.and_then(|u| u.event), false)),
        })
    }
}

impl<T> Follow<T>
where
    T: GrpcService<tonic::body::Body> + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    async fn next(&mut self) -> Option<Result<Update, Error>> {
        loop {
            if self.done {
                return None;
            }
            let Some(open) = self.open.as_mut() else {
                match self.open().await {
                    Ok(open) => self.open = Some(open),
                    Err(status) => return Some(self.broke(status)),
                }
                continue;
            };
            match open.next().await {
                Ok(Some((Some(event), reused))) => {
                    if let Event::Action(action) = &event {
                        let repeat = std::mem::take(&mut self.resumed)
                            && self.last == Some(action.status())
                            && self.action_id.as_deref() == Some(action.id.as_str());
                        if repeat {
                            continue;
                        }
                        self.action_id = Some(action.id.clone());
                        self.last = Some(action.status());
                    }
                    return Some(Ok(update(event, reused)));
                }
                Ok(Some((None, _))) => continue,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(_) if self.last.is_some_and(is_final) => {
                    // Only the trailers were lost: the caller has the scan's end.
                    self.done = true;
                    return None;
                }
                Err(status) => {
                    self.open = None;
                    return Some(self.broke(status));
                }
            }
        }
    }

    async fn open(&mut self) -> Result<Open, Status> {
        if let Some(wait) = self.wait.take() {
            tokio::time::sleep(wait).await;
        }
        let timeout = match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Status::deadline_exceeded(
                        "the call's deadline passed while the stream was resumed",
                    ));
                }
                Some(left)
            }
            None => None,
        };
        match (&self.action_id, &self.start) {
            (None, Some(start)) => {
                let request = with_timeout(start.clone(), timeout);
                Ok(Open::Run(self.client.run_scan(request).await?.into_inner()))
            }
            (Some(action_id), _) => {
                let request = with_timeout(
                    pb::WatchScanRequest {
                        action_id: action_id.clone(),
                    },
                    timeout,
                );
                Ok(Open::Watch(
                    self.client.watch_scan(request).await?.into_inner(),
                ))
            }
            (None, None) => Err(Status::invalid_argument("no action to follow")),
        }
    }

    /// After the stream broke with `status`: a resume notice (the next poll reopens), or the
    /// error that ends it.
    fn broke(&mut self, status: Status) -> Result<Update, Error> {
        let error = Error::from(status);
        match self.resume_wait(&error) {
            Some(wait) => {
                self.resumes += 1;
                self.wait = Some(wait);
                self.resumed = true;
                Ok(Update::Resumed {
                    reason: error.to_string(),
                    attempt: self.resumes,
                })
            }
            None => {
                self.done = true;
                Err(error)
            }
        }
    }

    /// How long to wait before resuming after `error`; `None` when it must not be resumed.
    fn resume_wait(&self, error: &Error) -> Option<Duration> {
        if self.resumes >= self.policy.max_resumes {
            return None;
        }
        let retryable = match error.kind() {
            ErrorKind::Transport | ErrorKind::Unavailable { .. } => true,
            // The gateway's longest watch ran out, not the caller's deadline.
            ErrorKind::DeadlineExceeded { reason, .. } => {
                reason.as_deref() == Some("WATCH_TIME_EXCEEDED")
            }
            _ => false,
        };
        // Before the action is known, only a keyed start can be asked again safely.
        let known = self.action_id.is_some()
            || self
                .start
                .as_ref()
                .is_some_and(|start| !start.request_id.is_empty());
        if !retryable || !known {
            return None;
        }
        let backoff = self
            .policy
            .first_backoff
            .saturating_mul(2u32.saturating_pow(self.resumes))
            .min(self.policy.max_backoff);
        let wait = error
            .retry_after()
            .map_or(backoff, |asked| asked.max(backoff));
        match self.deadline {
            Some(deadline) if Instant::now() + wait >= deadline => None,
            _ => Some(wait),
        }
    }
}

fn with_timeout<M>(message: M, timeout: Option<Duration>) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

fn is_final(status: pb::ActionStatus) -> bool {
    matches!(
        status,
        pb::ActionStatus::Succeeded
            | pb::ActionStatus::Failed
            | pb::ActionStatus::TimedOut
            | pb::ActionStatus::Cancelled
    )
}

fn update(event: Event, reused: bool) -> Update {
    match event {
        Event::Queued(queued) => Update::Queued(queued),
        Event::Waiting(waiting) => Update::Waiting(waiting),
        Event::Delayed(delayed) => Update::Delayed(delayed),
        Event::Action(action) => Update::Action { action, reused },
    }
}
