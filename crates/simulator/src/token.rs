//! The Entra ID token endpoint for the client-credentials grant, v1 (`/{tenant}/oauth2/token`,
//! `resource`, numbers as strings) and v2.0 (`/{tenant}/oauth2/v2.0/token`, `scope`, integers).
//!
//! Checks run in the order Entra appears to apply them (tenant, grant, client, audience,
//! credential), and every refusal uses Entra's error body with its AADSTS code, so a client's
//! handling of configuration mistakes can be tested. Error texts never contain the secret.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;

use super::aad_error::AadError;
use super::assertion;
use super::credentials::{self, JWT_BEARER};
use super::error::json_response;
use super::state::SimState;
use super::stats::Counters;

/// Accepted audiences: both API hosts, the App ID URI of the doc's curl sample, and the
/// WindowsDefenderATP application id.
const AUDIENCES: &[&str] = &[
    "https://api.securitycenter.microsoft.com",
    "https://api.security.microsoft.com",
    "https://securitycenter.onmicrosoft.com/windowsatpservice",
    "fc780465-2017-40d4-a0c5-307022471b92",
];

#[derive(Serialize)]
struct V2Token<'a> {
    token_type: &'a str,
    expires_in: u64,
    ext_expires_in: u64,
    access_token: &'a str,
}

#[derive(Serialize)]
struct V1Token<'a> {
    token_type: &'a str,
    expires_in: String,
    ext_expires_in: String,
    expires_on: String,
    not_before: String,
    resource: &'a str,
    access_token: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V1,
    V2,
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn v2(
    state: State<SimState>,
    tenant: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    endpoint(&state, Flavor::V2, &tenant, &headers, &body)
}

/// `POST /{tenant}/oauth2/token`.
pub(crate) async fn v1(
    state: State<SimState>,
    tenant: Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    endpoint(&state, Flavor::V1, &tenant, &headers, &body)
}

fn endpoint(
    state: &SimState,
    flavor: Flavor,
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let now = state.clock().utc();
    match issue(state, flavor, tenant, headers, body, now) {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(
                error = e.error,
                code = e.code,
                "simulated token request refused"
            );
            e.respond(now, headers)
        }
    }
}

fn issue(
    state: &SimState,
    flavor: Flavor,
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<Response, AadError> {
    let config = state.config();
    if !tenant.eq_ignore_ascii_case(&config.tenant_id) {
        return Err(AadError::tenant_not_found(tenant));
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let grant = field("grant_type").ok_or_else(|| AadError::missing("grant_type"))?;
    if grant != "client_credentials" {
        return Err(AadError::unsupported_grant(grant));
    }
    let basic = credentials::basic(headers);
    let client_id = field("client_id")
        .map(str::to_owned)
        .or_else(|| basic.as_ref().map(|(id, _)| id.clone()))
        .ok_or_else(|| AadError::missing("client_id"))?;
    if !client_id.eq_ignore_ascii_case(&config.client_id) {
        return Err(AadError::unknown_client(&client_id, tenant));
    }
    let resource = match flavor {
        Flavor::V2 => {
            let scope = field("scope").ok_or_else(|| AadError::missing("scope"))?;
            audience_of_scope(scope).ok_or_else(|| AadError::invalid_scope(scope))?
        }
        Flavor::V1 => {
            let resource = field("resource").ok_or_else(|| AadError::missing("resource"))?;
            audience_of_resource(resource)
                .ok_or_else(|| AadError::invalid_resource(resource, tenant))?
        }
    };
    let secret = field("client_secret")
        .map(SecretString::from)
        .or_else(|| basic.map(|(_, secret)| secret));
    check_credential(state, tenant, &client_id, secret, &field, now)?;

    let lifetime = config.token_lifetime;
    let token = state
        .tokens()
        // The configured spelling, so quota buckets don't split on the id's letter case.
        .issue(&config.client_id, lifetime, state.clock().now());
    Counters::bump(&state.counters().tokens_issued);
    tracing::debug!(?flavor, resource, "simulated token issued");
    let secs = lifetime.as_secs();
    let body = match flavor {
        Flavor::V2 => serde_json::to_vec(&V2Token {
            token_type: "Bearer",
            expires_in: secs,
            ext_expires_in: secs,
            access_token: &token,
        }),
        Flavor::V1 => {
            let issued = now.unix_timestamp();
            serde_json::to_vec(&V1Token {
                token_type: "Bearer",
                expires_in: secs.to_string(),
                ext_expires_in: secs.to_string(),
                expires_on: issued.saturating_add_unsigned(secs).to_string(),
                // Entra backdates not_before by five minutes to absorb clock skew.
                not_before: (issued - 300).to_string(),
                resource,
                access_token: &token,
            })
        }
    };
    let mut response = json_response(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response.into_response())
}

/// A secret (form or Basic auth) or a JWT client assertion.
fn check_credential<'a>(
    state: &SimState,
    tenant: &str,
    client_id: &str,
    secret: Option<SecretString>,
    field: &impl Fn(&str) -> Option<&'a str>,
    now: OffsetDateTime,
) -> Result<(), AadError> {
    if let Some(secret) = secret {
        if !credentials::secret_matches(&secret, &state.config().client_secret) {
            return Err(AadError::wrong_secret(client_id));
        }
        if state.faults().settings().token_secret_expired {
            return Err(AadError::secret_expired(client_id));
        }
        return Ok(());
    }
    match (field("client_assertion_type"), field("client_assertion")) {
        (Some(JWT_BEARER), Some(jwt)) => {
            assertion::verify(jwt, state.config(), tenant, client_id, now.unix_timestamp())
        }
        (Some(_), Some(_)) => Err(AadError::assertion_type()),
        _ => Err(AadError::no_credential()),
    }
}

/// `{audience}/.default` for one audience; several scopes must all name the same one.
fn audience_of_scope(scope: &str) -> Option<&'static str> {
    let mut found = None;
    for part in scope.split_whitespace() {
        let base = part.strip_suffix("/.default")?;
        let audience = audience_of_resource(base)?;
        if found.is_some_and(|f| f != audience) {
            return None;
        }
        found = Some(audience);
    }
    found
}

fn audience_of_resource(resource: &str) -> Option<&'static str> {
    let resource = resource.strip_suffix('/').unwrap_or(resource);
    AUDIENCES
        .iter()
        .copied()
        .find(|a| a.eq_ignore_ascii_case(resource))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_resources() {
        assert_eq!(
            audience_of_scope("https://api.securitycenter.microsoft.com/.default"),
            Some("https://api.securitycenter.microsoft.com")
        );
        assert!(
            audience_of_scope("https://securitycenter.onmicrosoft.com/windowsatpservice/.default")
                .is_some()
        );
        assert!(audience_of_scope("https://API.security.microsoft.com/.default https://api.security.microsoft.com/.default").is_some());
        assert!(audience_of_scope("https://api.security.microsoft.com/.default https://api.securitycenter.microsoft.com/.default").is_none());
        assert!(audience_of_scope("https://api.securitycenter.microsoft.com").is_none());
        assert!(audience_of_scope("https://graph.microsoft.com/.default").is_none());
        assert!(audience_of_scope("   ").is_none());
        assert!(audience_of_resource("https://api.securitycenter.microsoft.com/").is_some());
        assert!(
            audience_of_resource("https://api.securitycenter.microsoft.com/.default").is_none()
        );
    }
}
