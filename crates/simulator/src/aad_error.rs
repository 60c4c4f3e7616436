//! Entra ID's error body for the token endpoint, and one constructor per AADSTS error the
//! simulator produces, so the token flow reads as a list of checks.
//!
//! The texts follow Entra's wording; none of them ever contains the client secret.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use time::OffsetDateTime;

use super::credentials::JWT_BEARER;
use super::error::json_response;
use super::rng::fresh_guid;
use super::timestamp;

/// A refusal in Entra's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AadError {
    status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) code: u32,
    message: String,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: String,
    error_codes: [u32; 1],
    timestamp: &'a str,
    trace_id: &'a str,
    correlation_id: &'a str,
    error_uri: String,
}

impl AadError {
    fn new(status: StatusCode, error: &'static str, code: u32, message: String) -> Self {
        Self {
            status,
            error,
            code,
            message,
            retry_after: None,
        }
    }

    fn bad_request(error: &'static str, code: u32, message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, code, message)
    }

    fn invalid_client(code: u32, message: String) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
    }

    pub(crate) fn tenant_not_found(tenant: &str) -> Self {
        Self::bad_request(
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        )
    }

    pub(crate) fn missing(param: &str) -> Self {
        let msg = format!("The request body must contain the following parameter: '{param}'.");
        Self::bad_request("invalid_request", 900144, msg)
    }

    pub(crate) fn unsupported_grant(grant: &str) -> Self {
        let msg = format!("The app requested an unsupported grant type '{grant}'.");
        Self::bad_request("unsupported_grant_type", 70003, msg)
    }

    pub(crate) fn unknown_client(client_id: &str, tenant: &str) -> Self {
        Self::bad_request(
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        )
    }

    pub(crate) fn invalid_scope(scope: &str) -> Self {
        Self::bad_request(
            "invalid_scope",
            70011,
            format!(
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        )
    }

    pub(crate) fn invalid_resource(resource: &str, tenant: &str) -> Self {
        Self::bad_request(
            "invalid_resource",
            500011,
            format!(
                "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
            ),
        )
    }

    pub(crate) fn wrong_secret(client_id: &str) -> Self {
        Self::invalid_client(
            7000215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
            ),
        )
    }

    pub(crate) fn secret_expired(client_id: &str) -> Self {
        Self::invalid_client(
            7000222,
            format!(
                "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."
            ),
        )
    }

    pub(crate) fn no_credential() -> Self {
        Self::invalid_client(7000216, "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.".to_owned())
    }

    pub(crate) fn assertion_expired() -> Self {
        Self::invalid_client(
            700024,
            "Client assertion is not within its valid time range.".to_owned(),
        )
    }

    pub(crate) fn assertion_malformed() -> Self {
        Self::invalid_client(50027, "JWT token is invalid or malformed.".to_owned())
    }

    pub(crate) fn certificate_not_registered(thumbprint: &str, client_id: &str) -> Self {
        Self::invalid_client(
            700027,
            format!(
                "Client assertion failed signature validation. Reason - The key was not found. Thumbprint of key used by client: '{thumbprint}'. Please visit the Azure Portal to verify that the certificate is registered on application '{client_id}'."
            ),
        )
    }

    pub(crate) fn signature_invalid() -> Self {
        Self::invalid_client(
            700027,
            "Client assertion failed signature validation. Reason - The signature is invalid."
                .to_owned(),
        )
    }

    pub(crate) fn assertion_claims(reason: &str) -> Self {
        Self::invalid_client(50027, format!("JWT token is invalid: {reason}."))
    }

    pub(crate) fn no_federated_match(client_id: &str) -> Self {
        Self::invalid_client(
            700213,
            format!(
                "No matching federated identity record found for presented assertion subject. Check your federated identity credential configuration on application '{client_id}'."
            ),
        )
    }

    pub(crate) fn assertion_type() -> Self {
        let msg = format!("Client assertion type must be '{JWT_BEARER}'.");
        Self::bad_request("invalid_request", 50012, msg)
    }

    pub(crate) fn unavailable() -> Self {
        let msg = "A transient error has occurred. Try again.".to_owned();
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            90024,
            msg,
        )
    }

    pub(crate) fn throttled(secs: u64) -> Self {
        let msg = format!("The request was throttled. Retry after {secs} seconds.");
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            90055,
            msg,
        );
        e.retry_after = Some(secs);
        e
    }

    /// The response. The correlation id is the caller's `client-request-id` when it sent a
    /// GUID there, as Entra does, so client logs and error bodies can be matched.
    pub(crate) fn respond(&self, now: OffsetDateTime, headers: &HeaderMap) -> Response {
        let correlation = headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| uuid::Uuid::try_parse(v).ok())
            .map_or_else(fresh_guid, |u| u.to_string());
        let (trace, ts) = (fresh_guid(), timestamp::entra(now));
        let body = Body {
            error: self.error,
            error_description: format!(
                "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {ts}",
                self.code, self.message
            ),
            error_codes: [self.code],
            timestamp: &ts,
            trace_id: &trace,
            correlation_id: &correlation,
            error_uri: format!("https://login.microsoftonline.com/error?code={}", self.code),
        };
        let mut response = json_response(self.status, serde_json::to_vec(&body));
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
