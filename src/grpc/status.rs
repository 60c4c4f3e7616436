//! The one mapping from [`Error`] to `tonic::Status`, with google.rpc rich error details.
//! Every error leaves the gateway through here, and here it is logged.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    credentials::TokenError,
    error::{BlockedScan, Error},
    security::LimitKind,
    upstream::{self, ApiError},
};

/// The `domain` of every `ErrorInfo` the gateway sends.
pub const ERROR_DOMAIN: &str = "scan-gateway.defender.scan.v1";

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let status = to_status(&error);
        match status.code() {
            Code::Internal | Code::Unavailable => {
                tracing::warn!(code = ?status.code(), error = %error, "call failed")
            }
            _ => tracing::info!(code = ?status.code(), error = %error, "call refused"),
        }
        status
    }
}

/// The code `error` ends a call with (without logging it, as the conversion does).
pub fn code_of(error: &Error) -> Code {
    to_status(error).code()
}

/// The `reason` label of `scan_gateway_grpc_server_refused_total` for a call the inbound
/// layers refused.
pub fn refusal_reason(error: &Error) -> &'static str {
    match error {
        Error::PermissionDenied { .. } => "permission_denied",
        Error::CallerLimit { kind, .. } => kind.reason(),
        _ => "unauthenticated",
    }
}

fn to_status(error: &Error) -> Status {
    let message = match error {
        Error::Upstream(upstream) => upstream.caller_message(),
        _ => error.to_string(),
    };
    match error {
        Error::InvalidArgument(violations) => {
            let mut details = ErrorDetails::new();
            for v in violations {
                details.add_bad_request_violation(v.field, v.description.clone());
            }
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        Error::NotFound { resource, name, .. } => Status::with_error_details(
            Code::NotFound,
            message,
            ErrorDetails::with_resource_info(*resource, name.clone(), "", "not known to Defender"),
        ),
        Error::NotAScan { action_id } => Status::with_error_details(
            Code::NotFound,
            message,
            ErrorDetails::with_resource_info(
                "machine action",
                action_id.clone(),
                "",
                "not known to Defender as an antivirus scan",
            ),
        ),
        Error::AlreadyExists { machine_id, source } => Status::with_error_details(
            Code::AlreadyExists,
            message,
            error_info(
                "SCAN_ALREADY_RUNNING",
                [("machine_id".to_owned(), machine_id.clone())]
                    .into_iter()
                    .chain(upstream_metadata(source))
                    .collect(),
            ),
        ),
        Error::ScanBlocked(blocked) => {
            let BlockedScan {
                machine_id,
                action_id,
                scope,
                status,
                requested,
                retry_after,
            } = &**blocked;
            let mut details = error_info(
                "WEAKER_SCAN_RUNNING",
                HashMap::from([
                    ("machine_id".to_owned(), machine_id.clone()),
                    ("action_id".to_owned(), action_id.clone()),
                    ("scope".to_owned(), scope.clone()),
                    ("status".to_owned(), status.clone()),
                    ("requested_scan_type".to_owned(), (*requested).to_owned()),
                ]),
            );
            if let Some(after) = retry_after {
                details.set_retry_info(Some(*after));
            }
            Status::with_error_details(Code::FailedPrecondition, message, details)
        }
        Error::CallerLeft => Status::cancelled(message),
        Error::ShuttingDown => Status::unavailable(message),
        Error::KeyBusy => {
            let mut details = error_info("REQUEST_ID_IN_USE", HashMap::new());
            details.set_retry_info(Some(std::time::Duration::from_secs(1)));
            Status::with_error_details(Code::Aborted, message, details)
        }
        Error::KeysUnavailable => {
            let mut details = error_info("REQUEST_ID_UNCHECKED", HashMap::new());
            details.set_retry_info(Some(std::time::Duration::from_secs(1)));
            Status::with_error_details(Code::Unavailable, message, details)
        }
        Error::StartInterrupted => Status::internal(message),
        Error::Unauthenticated(_) => Status::with_error_details(
            Code::Unauthenticated,
            message,
            error_info("UNAUTHENTICATED", HashMap::new()),
        ),
        Error::PermissionDenied { caller, rpc } => Status::with_error_details(
            Code::PermissionDenied,
            message,
            error_info(
                "CALLER_NOT_ALLOWED",
                HashMap::from([
                    ("caller".to_owned(), caller.clone()),
                    ("rpc".to_owned(), rpc.clone()),
                ]),
            ),
        ),
        Error::PriorityNotAllowed {
            caller,
            requested,
            allowed,
        } => Status::with_error_details(
            Code::PermissionDenied,
            message,
            error_info(
                "PRIORITY_NOT_ALLOWED",
                HashMap::from([
                    ("caller".to_owned(), caller.clone()),
                    ("requested".to_owned(), (*requested).to_owned()),
                    ("allowed".to_owned(), (*allowed).to_owned()),
                ]),
            ),
        ),
        Error::CallerLimit {
            caller,
            kind,
            retry_after,
        } => {
            let mut details = error_info(
                match kind {
                    LimitKind::Rate => "CALLER_RATE_LIMITED",
                    LimitKind::Streams => "CALLER_STREAM_LIMIT",
                },
                HashMap::from([("caller".to_owned(), caller.clone())]),
            );
            if let Some(delay) = retry_after {
                details.set_retry_info(Some(*delay));
            }
            Status::with_error_details(Code::ResourceExhausted, message, details)
        }
        Error::WatchExpired { action_id, status } => Status::with_error_details(
            Code::DeadlineExceeded,
            message,
            error_info(
                "WATCH_TIME_EXCEEDED",
                HashMap::from([
                    ("action_id".to_owned(), action_id.clone()),
                    ("last_status".to_owned(), status.clone()),
                ]),
            ),
        ),
        Error::OutageOutlasted {
            action_id,
            status,
            since,
        } => {
            let mut details = error_info(
                "UPSTREAM_OUTAGE",
                HashMap::from([
                    ("action_id".to_owned(), action_id.clone()),
                    ("last_status".to_owned(), status.clone()),
                    ("outage_since".to_owned(), since.clone()),
                ]),
            );
            details.set_retry_info(Some(std::time::Duration::from_secs(30)));
            Status::with_error_details(Code::Unavailable, message, details)
        }
        Error::WatchFailed {
            action_id,
            not_found: true,
            ..
        } => Status::with_error_details(
            Code::NotFound,
            message,
            ErrorDetails::with_resource_info(
                "machine action",
                action_id.clone(),
                "",
                "no longer in Defender",
            ),
        ),
        Error::WatchFailed { .. } => Status::unavailable(message),
        Error::Upstream(upstream) => upstream_status(upstream, message),
    }
}

fn upstream_status(error: &upstream::Error, message: String) -> Status {
    use upstream::Error as U;
    match error {
        U::Api(api) => match api.status {
            400 | 409 | 412 | 422 => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                error_info(
                    if api.code.is_empty() {
                        "UPSTREAM_BAD_REQUEST"
                    } else {
                        &api.code
                    },
                    upstream_metadata(api).collect(),
                ),
            ),
            401 => Status::with_error_details(
                Code::Internal,
                message,
                error_info("UPSTREAM_AUTH", upstream_metadata(api).collect()),
            ),
            403 => Status::with_error_details(
                Code::PermissionDenied,
                message,
                error_info("UPSTREAM_FORBIDDEN", upstream_metadata(api).collect()),
            ),
            404 => Status::not_found(message),
            _ => {
                let mut details =
                    error_info("UPSTREAM_UNAVAILABLE", upstream_metadata(api).collect());
                if let Some(delay) = api.retry_after {
                    details.set_retry_info(Some(delay));
                }
                Status::with_error_details(Code::Unavailable, message, details)
            }
        },
        U::Transport { .. } | U::Malformed { .. } => retryable(message, None),
        U::Token(TokenError::Refused { error, aadsts, .. }) => {
            let mut metadata = HashMap::from([("error".to_owned(), error.clone())]);
            if let Some(code) = aadsts {
                metadata.insert("aadsts".to_owned(), code.to_string());
            }
            Status::with_error_details(
                Code::Internal,
                message,
                error_info("UPSTREAM_AUTH", metadata),
            )
        }
        U::Token(TokenError::Unavailable { retry_after, .. }) => retryable(message, *retry_after),
        U::Token(TokenError::Credential(_)) => Status::with_error_details(
            Code::Internal,
            message,
            error_info("UPSTREAM_AUTH", HashMap::new()),
        ),
        U::Quota(crate::quota::Error::QuotaExhausted { retry_after, .. }) => {
            Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(*retry_after)),
            )
        }
        U::DeadlineExceeded { .. } => Status::deadline_exceeded(message),
    }
}

/// UNAVAILABLE: try again (later, when the upstream said how much later).
fn retryable(message: String, retry_after: Option<std::time::Duration>) -> Status {
    match retry_after {
        Some(delay) => Status::with_error_details(
            Code::Unavailable,
            message,
            ErrorDetails::with_retry_info(Some(delay)),
        ),
        None => Status::unavailable(message),
    }
}

fn error_info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
}

/// The upstream's code, message and correlation id, for support cases.
fn upstream_metadata(api: &ApiError) -> impl Iterator<Item = (String, String)> + '_ {
    [
        ("upstream_status", Some(api.status.to_string())),
        (
            "upstream_code",
            Some(api.code.clone()).filter(|c| !c.is_empty()),
        ),
        (
            "upstream_message",
            Some(api.message.clone()).filter(|m| !m.is_empty()),
        ),
        ("upstream_target", api.target.clone()),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|v| (key.to_owned(), v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{domain::FieldViolation, upstream::Api};
    use std::time::Duration;

    fn api_error(status: u16, code: &str) -> ApiError {
        ApiError {
            api: Api::RunScan,
            status,
            code: code.into(),
            message: "msg".into(),
            target: Some("t-1".into()),
            retry_after: None,
        }
    }

    #[test]
    fn invalid_arguments_carry_one_violation_per_field() {
        let status = Status::from(Error::InvalidArgument(vec![
            FieldViolation::new("machine_id", "is required"),
            FieldViolation::new("comment", "is required"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[0].field, "machine_id");
    }

    #[test]
    fn upstream_errors_map_as_the_design_table_says() {
        let cases = [
            (
                api_error(400, "OsPlatformNotSupported"),
                Code::FailedPrecondition,
                Some("OsPlatformNotSupported"),
            ),
            (
                api_error(401, "Unauthorized"),
                Code::Internal,
                Some("UPSTREAM_AUTH"),
            ),
            (
                api_error(403, "Forbidden"),
                Code::PermissionDenied,
                Some("UPSTREAM_FORBIDDEN"),
            ),
            (
                api_error(500, "InternalServerError"),
                Code::Unavailable,
                Some("UPSTREAM_UNAVAILABLE"),
            ),
            (
                api_error(429, "TooManyRequests"),
                Code::Unavailable,
                Some("UPSTREAM_UNAVAILABLE"),
            ),
        ];
        for (api, code, reason) in cases {
            let status = Status::from(Error::Upstream(upstream::Error::Api(api)));
            assert_eq!(status.code(), code);
            assert_eq!(
                status.get_details_error_info().map(|i| i.reason),
                reason.map(str::to_owned)
            );
        }
    }

    #[test]
    fn a_weaker_running_scan_is_failed_precondition_naming_it() {
        let status = Status::from(Error::ScanBlocked(Box::new(BlockedScan {
            machine_id: "m-1".into(),
            action_id: "a-1".into(),
            scope: "Quick".into(),
            status: "InProgress".into(),
            requested: "Full",
            retry_after: Some(std::time::Duration::from_secs(90)),
        })));
        assert_eq!(status.code(), Code::FailedPrecondition);
        let retry = status.get_error_details().retry_info().cloned();
        assert_eq!(
            retry.and_then(|r| r.retry_delay),
            Some(std::time::Duration::from_secs(90))
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "WEAKER_SCAN_RUNNING");
        assert_eq!(
            (
                info.metadata["action_id"].as_str(),
                info.metadata["scope"].as_str()
            ),
            ("a-1", "Quick")
        );
    }

    #[test]
    fn quota_refusal_says_when_to_retry() {
        let status = Status::from(Error::Upstream(upstream::Error::Quota(
            crate::quota::Error::QuotaExhausted {
                api: Api::RunScan,
                retry_after: Duration::from_secs(42),
            },
        )));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(42))
        );
    }

    #[test]
    fn refused_credentials_are_internal_upstream_auth() {
        let status = Status::from(Error::Upstream(upstream::Error::Token(
            TokenError::Refused {
                kind: "client_secret",
                status: 401,
                error: "invalid_client".into(),
                aadsts: Some(7000215),
                hint: "AZURE_CLIENT_SECRET is wrong".into(),
            },
        )));
        assert_eq!(status.code(), Code::Internal);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "UPSTREAM_AUTH");
        assert_eq!(info.metadata["aadsts"], "7000215");
    }
}
