//! What can go wrong calling the Defender API. Messages never carry a token or a secret.

use std::{fmt, time::Duration};

use crate::{
    call::{Api, describe_error},
    credentials::TokenError,
    quota::Error as QuotaError,
};

/// How a request failed to get an HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The connection was never made: the request certainly did not reach the upstream.
    Connect,
    /// No answer in time: the request may or may not have been processed upstream.
    Timeout,
    /// Anything else (reset mid-flight, TLS, protocol): outcome unknown.
    Other,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "connection failed",
            TransportKind::Timeout => "timed out",
            TransportKind::Other => "request failed",
        })
    }
}

/// An HTTP error answer from the Defender API, decoded from its documented error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub api: Api,
    pub status: u16,
    /// Defender's symbolic code (`ResourceNotFound`, `ActiveRequestAlreadyExists`, ...); may be empty.
    pub code: String,
    pub message: String,
    /// Defender's correlation id, to quote to Microsoft support.
    pub target: Option<String>,
    /// From the `Retry-After` header (429, 503).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// Defender's answer to a second scan on a busy machine (documented for live response,
    /// seen for scans; the message is the only documented part).
    pub fn is_already_in_progress(&self) -> bool {
        self.status == 400
            && (self.code == "ActiveRequestAlreadyExists"
                || self
                    .message
                    .to_ascii_lowercase()
                    .contains("already in progress"))
    }
}

impl std::error::Error for ApiError {}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} answered HTTP {}", self.api, self.status)?;
        if !self.code.is_empty() {
            write!(f, " {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Every failure of an upstream call. Clone: a read in flight answers every caller waiting
/// on it (`scans::reads`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Api(ApiError),
    #[error("calling {api}: {kind}: {detail}")]
    Transport {
        api: Api,
        kind: TransportKind,
        detail: String,
    },
    #[error("{api} answered with an unexpected body: {detail}")]
    Malformed { api: Api, detail: String },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// `sent`: the request had left when the deadline cut the exchange, so whether it took
    /// effect is unknown (a scan POST may have created its action).
    #[error("the caller's deadline passed before {api} answered")]
    DeadlineExceeded { api: Api, sent: bool },
}

impl Error {
    /// Builds a transport error from reqwest's, with its whole cause chain (the URL in it is
    /// ours and carries no secret).
    pub fn transport(api: Api, err: &reqwest::Error) -> Self {
        let kind = if err.is_connect() {
            TransportKind::Connect
        } else if err.is_timeout() {
            TransportKind::Timeout
        } else {
            TransportKind::Other
        };
        let detail = describe_error(err);
        Error::Transport { api, kind, detail }
    }

    /// A short, stable name for metrics and span attributes (`error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Api(_) => "http_status",
            Error::Transport {
                kind: TransportKind::Connect,
                ..
            } => "connect",
            Error::Transport {
                kind: TransportKind::Timeout,
                ..
            } => "timeout",
            Error::Transport { .. } => "transport",
            Error::Malformed { .. } => "malformed_response",
            Error::Token(_) => "token",
            Error::Quota(_) => "quota_exhausted",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
        }
    }
}
