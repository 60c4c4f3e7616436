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
    /// A scan is already running on the machine and could not be resolved to its action.
    #[error("a scan is already running on machine {machine_id} and its action could not be found")]
    AlreadyExists {
        machine_id: String,
        source: Box<upstream::ApiError>,
    },
    /// The Defender API, the token endpoint, or the quota in front of them.
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
    /// The gateway is shutting down; the caller should resume on another replica.
    #[error("the gateway is shutting down; resume with WatchScan on another replica")]
    ShuttingDown,
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
