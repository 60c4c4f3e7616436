//! What each caller may do, and which limit refused a call. The layer that counts calls
//! against these is `inbound::limits`.

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
