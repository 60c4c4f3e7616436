//! The gateway's errors, decoded from the status and its `google.rpc` details into what a
//! caller acts on: which fields were wrong, what was not found, the reason code, when to retry.

use std::{collections::HashMap, error::Error as _, time::Duration};

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A failed call: what kind of failure, with the details the gateway sent; [`Error::status`]
/// keeps the status as received.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", code_name(.status.code()), .status.message())]
pub struct Error {
    kind: ErrorKind,
    status: Status,
}

/// What went wrong, by the gateway's error table (README, "Errors").
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is invalid; nothing was sent to Defender. One entry per field.
    InvalidArgument { violations: Vec<FieldViolation> },
    /// Defender does not know the machine or the action (or it is not an antivirus scan).
    NotFound {
        resource_type: String,
        resource_name: String,
    },
    /// The gateway did not accept the caller's credentials.
    Unauthenticated,
    /// The caller may not make this call, or the gateway's application lacks a Defender
    /// permission (`reason` says which: `CALLER_NOT_ALLOWED`, `UPSTREAM_FORBIDDEN`).
    PermissionDenied { reason: Option<String> },
    /// Refused as things stand: a weaker scan running (`WEAKER_SCAN_RUNNING`), or Defender's own
    /// refusal (`reason` is Defender's code, e.g. `OsPlatformNotSupported`).
    FailedPrecondition {
        reason: Option<String>,
        metadata: HashMap<String, String>,
        retry_after: Option<Duration>,
    },
    /// A scan is running on the machine and its action could not be found.
    AlreadyExists { metadata: HashMap<String, String> },
    /// The quota or a caller limit: retry after `retry_after`.
    ResourceExhausted {
        reason: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Try again: the gateway is shutting down, Defender is unavailable, an outage outlasted
    /// the stream (`UPSTREAM_OUTAGE`), the shared keys cannot be checked.
    Unavailable {
        reason: Option<String>,
        metadata: HashMap<String, String>,
        retry_after: Option<Duration>,
    },
    /// The deadline passed, or the stream's watch time ran out (`WATCH_TIME_EXCEEDED`).
    DeadlineExceeded {
        reason: Option<String>,
        metadata: HashMap<String, String>,
    },
    /// Another request with the same `request_id` is still starting its scan: retry.
    Aborted { retry_after: Option<Duration> },
    /// No answer from a gateway: the connection could not be made or broke.
    Transport,
    /// Anything else (`INTERNAL`, credentials the gateway itself could not use, ...).
    Other,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl Error {
    /// The kind of failure, with its details.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The status as the gateway (or the transport) gave it.
    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn code(&self) -> Code {
        self.status.code()
    }

    /// The `ErrorInfo` reason, when the gateway sent one.
    pub fn reason(&self) -> Option<&str> {
        match &self.kind {
            ErrorKind::PermissionDenied { reason }
            | ErrorKind::FailedPrecondition { reason, .. }
            | ErrorKind::ResourceExhausted { reason, .. }
            | ErrorKind::Unavailable { reason, .. }
            | ErrorKind::DeadlineExceeded { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }

    /// How long the gateway asked to wait before retrying, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            ErrorKind::FailedPrecondition { retry_after, .. }
            | ErrorKind::ResourceExhausted { retry_after, .. }
            | ErrorKind::Unavailable { retry_after, .. }
            | ErrorKind::Aborted { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A failure of the connection rather than an answer of a gateway: the status was made on
    /// this side (it has a transport error as its source).
    pub fn is_transport(&self) -> bool {
        self.kind == ErrorKind::Transport
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info();
        let reason = info.map(|i| i.reason.clone());
        let metadata = info.map(|i| i.metadata.clone()).unwrap_or_default();
        let retry_after = details.retry_info().and_then(|r| r.retry_delay);
        // A status made here from a transport failure carries its cause; the gateway's own
        // statuses arrive in trailers and have none.
        let local = status.source().is_some();
        let kind = match status.code() {
            _ if local => ErrorKind::Transport,
            Code::InvalidArgument => ErrorKind::InvalidArgument {
                violations: details
                    .bad_request()
                    .map(|b| {
                        b.field_violations
                            .iter()
                            .map(|v| FieldViolation {
                                field: v.field.clone(),
                                description: v.description.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            Code::NotFound => {
                let resource = details.resource_info();
                ErrorKind::NotFound {
                    resource_type: resource
                        .map(|r| r.resource_type.clone())
                        .unwrap_or_default(),
                    resource_name: resource
                        .map(|r| r.resource_name.clone())
                        .unwrap_or_default(),
                }
            }
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::PermissionDenied => ErrorKind::PermissionDenied { reason },
            Code::FailedPrecondition => ErrorKind::FailedPrecondition {
                reason,
                metadata,
                retry_after,
            },
            Code::AlreadyExists => ErrorKind::AlreadyExists { metadata },
            Code::ResourceExhausted => ErrorKind::ResourceExhausted {
                reason,
                retry_after,
            },
            Code::Unavailable => ErrorKind::Unavailable {
                reason,
                metadata,
                retry_after,
            },
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded { reason, metadata },
            Code::Aborted => ErrorKind::Aborted { retry_after },
            _ => ErrorKind::Other,
        };
        Error { kind, status }
    }
}

/// The code as the gRPC spec spells it (`UNAVAILABLE`).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn the_details_become_fields_of_the_kind() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("machine_id", "is required");
        let error = Error::from(Status::with_error_details(
            Code::InvalidArgument,
            "invalid request",
            details,
        ));
        assert_eq!(
            error.kind(),
            &ErrorKind::InvalidArgument {
                violations: vec![FieldViolation {
                    field: "machine_id".into(),
                    description: "is required".into(),
                }]
            }
        );
        assert_eq!(error.to_string(), "INVALID_ARGUMENT: invalid request");

        let mut details = ErrorDetails::with_error_info(
            "UPSTREAM_OUTAGE",
            "scan-gateway.defender.scan.v1",
            HashMap::from([("last_status".to_owned(), "InProgress".to_owned())]),
        );
        details.set_retry_info(Some(Duration::from_secs(30)));
        let error = Error::from(Status::with_error_details(
            Code::Unavailable,
            "outage",
            details,
        ));
        assert_eq!(error.reason(), Some("UPSTREAM_OUTAGE"));
        assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
        assert!(!error.is_transport());
        let ErrorKind::Unavailable { metadata, .. } = error.kind() else {
            panic!("{error:?}");
        };
        assert_eq!(metadata["last_status"], "InProgress");
    }
}
