//! What a caller reads when the Defender API failed its call: what happened, in the terms of
//! the call it made. Defender's status, code, message and correlation id go in `ErrorInfo`
//! (`grpc::status`), and the log line keeps the technical account (`Error`'s `Display`: the
//! API's name, the transport's cause chain).

use super::{Api, ApiError, Error, TransportKind};

impl Error {
    /// The caller-facing message for this failure.
    pub fn caller_message(&self) -> String {
        upstream_message(self)
    }
}

fn upstream_message(error: &Error) -> String {
    use Error as U;
    match error {
        U::Api(api) => api_message(api),
        U::Transport { api, kind, .. } => match kind {
            TransportKind::Connect => {
                format!("Defender could not be reached to {}; try again", what(*api))
            }
            TransportKind::Timeout => format!(
                "Defender did not answer in time when asked to {}{}",
                what(*api),
                maybe_started(*api)
            ),
            TransportKind::Other => format!(
                "the connection to Defender broke while asking it to {}{}",
                what(*api),
                maybe_started(*api)
            ),
        },
        U::Malformed { api, .. } => format!(
            "Defender's answer when asked to {} could not be read; try again",
            what(*api)
        ),
        U::DeadlineExceeded { api, sent } => format!(
            "the call's deadline passed before Defender answered when asked to {}{}",
            what(*api),
            if *sent { maybe_started(*api) } else { "" }
        ),
        // The gateway's own terms already (the token endpoint, the quota).
        U::Token(_) | U::Quota(_) => error.to_string(),
    }
}

fn api_message(api: &ApiError) -> String {
    let what = what(api.api);
    match api.status {
        400 | 409 | 412 | 422 => {
            let told = api.message.trim();
            if told.is_empty() {
                format!("Defender refused to {what}")
            } else {
                format!("Defender refused to {what}: {told}")
            }
        }
        401 => format!(
            "Defender did not accept the gateway's access token when asked to {what}, even a \
             freshly issued one: check the application's permissions and the token scope"
        ),
        403 => format!(
            "the gateway's application may not {what} in Defender: it lacks a Defender \
             permission (Machine.Scan to scan and cancel, Machine.Read.All to read)"
        ),
        404 => format!("Defender found nothing to {what}"),
        429 => format!("Defender throttled the request to {what}; try again later"),
        500.. => format!(
            "Defender failed to {what}: it answered with a server error{}",
            maybe_started(api.api)
        ),
        status => format!("Defender answered an unexpected HTTP {status} when asked to {what}"),
    }
}

/// The call, as the caller made it.
fn what(api: Api) -> &'static str {
    match api {
        Api::RunScan => "start the scan",
        Api::GetAction => "read the scan",
        Api::ListActions => "list the scans",
        Api::CancelAction => "cancel the scan",
    }
}

/// A start whose answer was lost may have created the scan.
fn maybe_started(api: Api) -> &'static str {
    match api {
        Api::RunScan => " (the scan may have started: ListScans shows it)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(api: Api, status: u16, code: &str, message: &str) -> Error {
        Error::Api(ApiError {
            api,
            status,
            code: code.into(),
            message: message.into(),
            target: Some("corr-1".into()),
            retry_after: None,
        })
    }

    #[test]
    fn callers_read_what_happened_to_their_call_not_the_api_behind_it() {
        let cases = [
            (
                refused(
                    Api::RunScan,
                    400,
                    "OsPlatformNotSupported",
                    "OS not supported",
                ),
                "Defender refused to start the scan: OS not supported",
            ),
            (
                refused(Api::CancelAction, 400, "BadRequest", ""),
                "Defender refused to cancel the scan",
            ),
            (
                refused(Api::GetAction, 503, "", "busy"),
                "Defender failed to read the scan: it answered with a server error",
            ),
            (
                Error::Transport {
                    api: Api::RunScan,
                    kind: TransportKind::Other,
                    detail: "error sending request for url (http://10.0.0.1/api)".into(),
                },
                "the connection to Defender broke while asking it to start the scan (the scan \
                 may have started: ListScans shows it)",
            ),
            (
                Error::DeadlineExceeded {
                    api: Api::ListActions,
                    sent: true,
                },
                "the call's deadline passed before Defender answered when asked to list the scans",
            ),
        ];
        for (error, expected) in cases {
            let message = upstream_message(&error);
            assert_eq!(message, expected);
            for internal in [
                "run_antivirus_scan",
                "cancel_machine_action",
                "HTTP 4",
                "url (",
            ] {
                assert!(!message.contains(internal), "{message}");
            }
        }
    }
}
