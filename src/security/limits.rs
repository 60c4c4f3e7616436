//! What each caller and each connection may do, and which limit refused a call. The layer that counts calls
//! against these is `inbound::limits`.

use std::time::Duration;

/// What each caller may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallerLimits {
    /// Sustained calls per second per caller; `None` is unlimited.
    pub rate: Option<f64>,
    /// Calls a caller may make at once above the sustained rate.
    pub burst: u32,
    /// Open `RunScan`/`WatchScan` streams per caller.
    pub max_streams: usize,
}

/// What a client connection may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From accept to the end of TLS and the HTTP/2 preface with the first frame.
    pub handshake: Duration,
    /// A connection with no call in flight this long is closed.
    pub idle: Duration,
    /// HTTP/2 keep-alive: time between pings, and how long one may stay unanswered.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Open connections, in total and per peer IP address.
    pub max_total: usize,
    pub max_per_peer: usize,
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Rate,
    Streams,
}

impl LimitKind {
    pub fn describe(self) -> &'static str {
        match self {
            LimitKind::Rate => "the request rate limit",
            LimitKind::Streams => "the limit of open streams",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            LimitKind::Rate => "caller_rate",
            LimitKind::Streams => "caller_streams",
        }
    }
}
