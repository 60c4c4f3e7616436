//! Defender's error envelope: `{"error":{"code","message","target"}}` with a fresh GUID target.
//!
//! One enum names every error the simulated API can return and maps it to the documented status
//! code and `code` string in one place, so handlers only say what went wrong.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::rng::fresh_guid;

/// Longest piece of caller input echoed back in a message.
const MAX_ECHO: usize = 100;

/// Every error of the simulated Defender API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("Invalid input {}.", echo(.0))]
    InvalidInput(String),
    #[error("Invalid request body.")]
    InvalidRequestBody,
    #[error("Parameter {0} is missing.")]
    MissingRequiredParameter(&'static str),
    #[error("OS Platform {0} isn't supported for this action.")]
    OsPlatformNotSupported(String),
    #[error("Action is already in progress")]
    ActiveRequestAlreadyExists,
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("No HTTP resource was found that matches the request URI.")]
    NotFound,
    #[error("The query specified in the URI is not valid. {0}")]
    OData(String),
    /// Observed with a non-standard body: empty `code`, a `details` array and no `target`.
    #[error(
        "The query specified in the URI is not valid. Custom query option '{}' that starts with '$' is not supported.",
        echo(.0)
    )]
    UnsupportedQueryOption(String),
    /// Carries the `Retry-After` seconds.
    #[error("Request quota exceeded. Retry after {0} seconds.")]
    TooManyRequests(u64),
    #[error("")]
    InternalServerError,
}

/// Caller input is quoted, but never at unbounded length.
fn echo(input: &str) -> String {
    match input.char_indices().nth(MAX_ECHO) {
        Some((cut, _)) => format!("{}...", &input[..cut]),
        None => input.to_owned(),
    }
}

impl ApiError {
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::BadRequest(_) => "BadRequest",
            Self::InvalidInput(_) => "InvalidInput",
            Self::InvalidRequestBody => "InvalidRequestBody",
            Self::MissingRequiredParameter(_) => "MissingRequiredParameter",
            Self::OsPlatformNotSupported(_) => "OsPlatformNotSupported",
            Self::ActiveRequestAlreadyExists => "ActiveRequestAlreadyExists",
            Self::ResourceNotFound(_) => "ResourceNotFound",
            Self::NotFound => "NotFound",
            Self::OData(_) => "ODataError",
            Self::UnsupportedQueryOption(_) => "",
            Self::TooManyRequests(_) => "TooManyRequests",
            Self::InternalServerError => "InternalServerError",
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::ResourceNotFound(_) | Self::NotFound => StatusCode::NOT_FOUND,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Serialize)]
struct Envelope<B> {
    error: B,
}

#[derive(Serialize)]
struct Standard<'a> {
    code: &'a str,
    message: &'a str,
    target: &'a str,
}

#[derive(Serialize)]
struct WithDetails<'a> {
    code: &'a str,
    message: &'a str,
    details: [(); 0],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let body = if let Self::UnsupportedQueryOption(_) = self {
            serde_json::to_vec(&Envelope {
                error: WithDetails {
                    code: self.code(),
                    message: &message,
                    details: [],
                },
            })
        } else {
            serde_json::to_vec(&Envelope {
                error: Standard {
                    code: self.code(),
                    message: &message,
                    target: &fresh_guid(),
                },
            })
        };
        let mut response = json_response(self.status(), body);
        if let Self::TooManyRequests(secs) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A JSON response from already serialised bytes (serialising our own structs cannot fail,
/// but if it ever did the client gets a bare 500 rather than a panic).
pub(crate) fn json_response(status: StatusCode, body: serde_json::Result<Vec<u8>>) -> Response {
    match body {
        Ok(bytes) => (
            status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            bytes,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_the_documented_patterns() {
        assert_eq!(
            ApiError::InvalidInput("x".into()).to_string(),
            "Invalid input x."
        );
        assert_eq!(
            ApiError::MissingRequiredParameter("Comment").to_string(),
            "Parameter Comment is missing."
        );
        assert_eq!(
            ApiError::TooManyRequests(37).to_string(),
            "Request quota exceeded. Retry after 37 seconds."
        );
        let long = ApiError::InvalidInput("a".repeat(500)).to_string();
        assert!(long.len() < 130, "{long}");
    }
}
