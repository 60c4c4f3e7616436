//! The gateway's error: every failure a call can end with. It becomes a gRPC status in exactly
//! one place, `grpc::status`.

use crate::{domain::FieldViolation, upstream};

/// Everything that can end a `ScanService` call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid; nothing was sent upstream.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// Defender does not know the machine or the action.
    #[error("{resource} `{name}` was not found in Defender")]
    NotFound {
        resource: &'static str,
        name: String,
        source: Box<upstream::ApiError>,
    },
    /// The action exists but is not an antivirus scan: to callers of this gateway it does
    /// not (the message does not say what it is).
    #[error("antivirus scan `{action_id}` was not found in Defender")]
    NotAScan { action_id: String },
    /// A scan is already running on the machine and could not be resolved to its action.
    #[error("a scan is already running on machine {machine_id} and its action could not be found")]
    AlreadyExists {
        machine_id: String,
        source: Box<upstream::ApiError>,
    },
    /// A less thorough scan runs on the machine (a Quick one when a Full one was requested)
    /// and did not end in time for the requested scan to start within the caller's deadline.
    #[error(
        "machine {} is running a less thorough scan (action {}, scope `{}`, {}) that did not end in time to start the requested {} scan",
        .0.machine_id, .0.action_id, .0.scope, .0.status, .0.requested
    )]
    ScanBlocked(Box<BlockedScan>),
    /// The caller left while its scan waited for a running scan to end: the scan is not
    /// started.
    #[error("the caller left while its scan waited for a running scan to end; nothing was started")]
    CallerLeft,
    /// The Defender API, the token endpoint, or the quota in front of them.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// The stream's watch time (or the caller's deadline) ran out before a final status.
    #[error(
        "machine action {action_id} was still {status} when the watch time ran out; resume with WatchScan"
    )]
    WatchExpired { action_id: String, status: String },
    /// An upstream outage lasted longer than a stream rides it out.
    #[error(
        "the Defender API could not be read for too long (since {since}); machine action {action_id} was last seen {status}; resume with WatchScan"
    )]
    OutageOutlasted {
        action_id: String,
        status: String,
        /// RFC 3339.
        since: String,
    },
    /// The action could not be followed any more.
    #[error("cannot follow machine action {action_id}: {detail}")]
    WatchFailed {
        action_id: String,
        not_found: bool,
        detail: String,
    },
    /// The task starting a stream's scan ended without an answer (it panicked); the scan may
    /// exist.
    #[error("the scan's start was interrupted; look it up with ListScans")]
    StartInterrupted,
    /// Another request with the same `request_id` is still starting its scan (on another
    /// replica), past this request's wait: retrying later finds the scan it started.
    #[error("another request with this request_id is still starting its scan; retry to get it")]
    KeyBusy,
    /// The shared `request_id` keys cannot be read (Redis is unreachable, or lost its data a
    /// moment ago and the replicas are writing their keys back) and another replica may have
    /// used this key: starting now could start a second scan.
    #[error(
        "the request_id cannot be checked across replicas right now (the shared keys are unavailable); retry shortly"
    )]
    KeysUnavailable,
    /// The gateway is shutting down; the caller should resume on another replica.
    #[error("the gateway is shutting down; resume with WatchScan on another replica")]
    ShuttingDown,
    /// The caller sent no usable credential (client certificate or bearer JWT).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The policy does not let this caller make this call.
    #[error("caller `{caller}` may not call {rpc}")]
    PermissionDenied { caller: String, rpc: String },
    /// The policy does not let this caller use the quota class it asked for.
    #[error(
        "caller `{caller}` may not ask for {requested} priority; its policy allows at most {allowed}"
    )]
    PriorityNotAllowed {
        caller: String,
        requested: &'static str,
        allowed: &'static str,
    },
    /// The caller is over one of its limits (request rate, open streams).
    #[error("{} of caller `{caller}` reached", .kind.describe())]
    CallerLimit {
        caller: String,
        kind: crate::security::LimitKind,
        retry_after: Option<std::time::Duration>,
    },
}

impl From<FieldViolation> for Error {
    fn from(violation: FieldViolation) -> Self {
        Error::InvalidArgument(vec![violation])
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The scan in the way of a request ([`Error::ScanBlocked`]).
#[derive(Debug)]
pub struct BlockedScan {
    pub machine_id: String,
    pub action_id: String,
    pub scope: String,
    pub status: String,
    pub requested: &'static str,
    /// When the running scan is expected to end, if in sight.
    pub retry_after: Option<std::time::Duration>,
}
