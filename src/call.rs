//! What every part of an outbound call agrees on: the request and response types, the
//! [`Api`] a request is for, and the extensions that travel with it (the caller's
//! [`Deadline`], who the call is for, who to tell about quota waits).
//!
//! A leaf: it imports nothing of this crate, so the client, the layers, the quota and the
//! credentials can all depend on it without depending on each other.

use std::{
    fmt,
    num::IntErrorKind,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, header};
use tokio::time::Instant;

/// A request to the Defender API: a complete `http::Request` tagged with its [`Api`].
pub type Request = http::Request<Bytes>;
/// A whole, buffered answer.
pub type Response = http::Response<Bytes>;

/// The Defender APIs the gateway calls. Each has its own quota upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    RunScan,
    GetAction,
    ListActions,
    CancelAction,
}

impl Api {
    pub const ALL: [Api; 4] = [
        Api::RunScan,
        Api::GetAction,
        Api::ListActions,
        Api::CancelAction,
    ];

    /// A stable label for metrics, spans and configuration keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::RunScan => "run_antivirus_scan",
            Api::GetAction => "get_machine_action",
            Api::ListActions => "list_machine_actions",
            Api::CancelAction => "cancel_machine_action",
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Request extension: the caller's deadline. Layers that wait (quota) or call out (HTTP)
/// never go past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// Request extension: told when the request has to wait for quota, with its queue position
/// and the estimated start. `RunScan` turns these into `queued` events.
#[derive(Clone)]
pub struct QueueObserver(pub Arc<dyn Fn(usize, Instant) + Send + Sync>);

impl fmt::Debug for QueueObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueObserver")
    }
}

/// Request extension: who an upstream call is made for. The quota serves callers in turn
/// and keeps each to its `share` of every API's quota; within its `priority` class.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaCaller {
    pub id: Arc<str>,
    /// Share (0..=1) of each API's quota; `None` is no cap.
    pub share: Option<f64>,
    pub priority: Priority,
}

impl QuotaCaller {
    /// The gateway itself (the watcher's refreshes).
    pub fn gateway() -> Self {
        Self {
            id: Arc::from("scan-gateway"),
            share: None,
            priority: Priority::Normal,
        }
    }
}

/// The quota's classes: urgent calls are admitted before normal ones, normal before
/// background (which keeps a floor, so it never starves). Ordered most urgent first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Urgent,
    #[default]
    Normal,
    Background,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Urgent, Priority::Normal, Priority::Background];

    /// A stable label for metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::Normal => "normal",
            Priority::Background => "background",
        }
    }

    /// Its place in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-call context: the caller's deadline and who to tell about quota waits. The client
/// turns it into the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    pub deadline: Option<Instant>,
    pub observer: Option<QueueObserver>,
    /// Who the call is for (fair queueing, quota shares); `None` counts as the gateway.
    pub caller: Option<QuotaCaller>,
    /// The authenticated caller, whose idempotency keys are its own. `None` without
    /// authentication: those callers share one scope, since an address is not an identity (a
    /// caller retrying from another pod or egress address must still find its key).
    pub key_owner: Option<Arc<str>>,
}

/// The API a request is for; every request the client builds is tagged with it.
pub fn api_of(request: &Request) -> Api {
    *request
        .extensions()
        .get::<Api>()
        .expect("DefenderClient tags every request with its Api")
}

/// A copy of a request for a retry. Requests hold their body as `Bytes`, so this is cheap.
pub fn clone_request(request: &Request) -> Request {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}

/// The longest wait a `Retry-After` header is taken to ask for. Defender's and Entra ID's
/// throttling windows are a minute or an hour long, so a longer wait (or an absurd one, such as
/// `18446744073709551615`, which once overflowed an `Instant` and killed the watcher) is read as
/// this: the API pauses at most an hour, and a call after that asks again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The wait a `Retry-After` header asks for (seconds, or an HTTP date after `now`), at most
/// [`MAX_RETRY_AFTER`]. Every `Retry-After` the gateway reads comes through here, so no other
/// code sees a wait from outside that it cannot add to an `Instant`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        // Too many digits for a u64 is still a number of seconds: a very long wait.
        Err(err) if *err.kind() == IntErrorKind::PosOverflow => Duration::MAX,
        Err(_) => httpdate(value)?.duration_since(now).unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// `at + wait`, or the furthest instant reachable from `at` when the sum does not fit an
/// `Instant` (waits from outside are bounded where they are parsed; this keeps the arithmetic
/// itself from panicking however large a wait is).
pub fn instant_after(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait)
        .or_else(|| at.checked_add(FAR_FUTURE))
        .unwrap_or(at)
}

/// About 30 years: further than any timer the gateway sets.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

fn httpdate(value: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(value, format)
        .ok()
        .map(|at| at.assume_utc().into())
}

/// An error with its whole cause chain, `outer: inner: innermost` (reqwest's own message
/// leaves out the cause, which is where "connection refused" is).
pub fn describe_error(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(retry_after: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, retry_after.parse().unwrap());
        headers
    }

    #[test]
    fn a_huge_retry_after_is_clamped_to_an_hour() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            retry_after(&headers("37"), now),
            Some(Duration::from_secs(37))
        );
        for huge in [
            "18446744073709551615",
            "99999999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(
                retry_after(&headers(huge), now),
                Some(MAX_RETRY_AFTER),
                "{huge}"
            );
        }
        assert_eq!(retry_after(&headers("-1"), now), None);
    }

    #[test]
    fn an_instant_after_a_huge_wait_does_not_overflow() {
        let now = Instant::now();
        assert_eq!(
            instant_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(instant_after(now, Duration::MAX) > now);
    }
}
