//! The Entra ID token endpoint for the client-credentials grant, v1 (`/{tenant}/oauth2/token`,
//! `resource`, numbers as strings) and v2.0 (`/{tenant}/oauth2/v2.0/token`, `scope`, integers).
//!
//! Checks run in the order Entra appears to apply them (tenant, grant, client, audience,
//! credential), and every refusal uses Entra's error body with its AADSTS code, so a client's
//! handling of configuration mistakes can be tested. Error texts never contain the secret.
//!
//! Access tokens are JWTs with the claims of an app-only token (`jwt.rs`); their key is served
//! at the keys endpoints.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;

use super::aad_error::AadError;
use super::assertion;
use super::audience;
use super::config::SimulatorConfig;
use super::credentials::{self, JWT_BEARER};
use super::error::json_response;
use super::jwt::{self, Claims};
use super::rng::{Rng, entropy};
use super::state::SimState;
use super::stats::Counters;

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
            audience::of_scope(scope).ok_or_else(|| AadError::invalid_scope(scope))?
        }
        Flavor::V1 => {
            let resource = field("resource").ok_or_else(|| AadError::missing("resource"))?;
            audience::of_resource(resource)
                .ok_or_else(|| AadError::invalid_resource(resource, tenant))?
        }
    };
    let secret = field("client_secret")
        .map(SecretString::from)
        .or_else(|| basic.map(|(_, secret)| secret));
    let appidacr = check_credential(state, tenant, &client_id, secret, &field, now)?;

    let lifetime = config.token_lifetime;
    let claims = claims(config, resource, appidacr, now);
    let token = state.signer().sign(&claims).map_err(|e| {
        tracing::warn!(error = %e, "simulated token endpoint could not sign a token");
        AadError::unavailable()
    })?;
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
        Flavor::V1 => serde_json::to_vec(&V1Token {
            token_type: "Bearer",
            expires_in: secs.to_string(),
            ext_expires_in: secs.to_string(),
            expires_on: claims.exp.to_string(),
            not_before: claims.nbf.to_string(),
            resource,
            access_token: &token,
        }),
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

/// A secret (form or Basic auth) or a JWT client assertion; the token's `appidacr` for it.
fn check_credential<'a>(
    state: &SimState,
    tenant: &str,
    client_id: &str,
    secret: Option<SecretString>,
    field: &impl Fn(&str) -> Option<&'a str>,
    now: OffsetDateTime,
) -> Result<&'static str, AadError> {
    if let Some(secret) = secret {
        if !credentials::secret_matches(&secret, &state.config().client_secret) {
            return Err(AadError::wrong_secret(client_id));
        }
        if state.faults().settings().token_secret_expired {
            return Err(AadError::secret_expired(client_id));
        }
        return Ok("1");
    }
    match (field("client_assertion_type"), field("client_assertion")) {
        (Some(JWT_BEARER), Some(jwt)) => {
            assertion::verify(jwt, state.config(), tenant, client_id, now.unix_timestamp())
                .map(|()| "2")
        }
        (Some(_), Some(_)) => Err(AadError::assertion_type()),
        _ => Err(AadError::no_credential()),
    }
}

/// The claims of an app-only token for `resource`, issued `now`.
fn claims(
    config: &SimulatorConfig,
    resource: &str,
    appidacr: &'static str,
    now: OffsetDateTime,
) -> Claims {
    // Entra backdates iat/nbf by five minutes to absorb clock skew.
    let issued = now.unix_timestamp() - 300;
    let iss = jwt::issuer(&config.tenant_id);
    // The application's service principal: stable for a seed, like the inventory.
    let service_principal = Rng::stream(config.seed, "service principal").guid();
    let mut uti = [0u8; 16];
    uti[..8].copy_from_slice(&entropy().to_le_bytes());
    uti[8..].copy_from_slice(&entropy().to_le_bytes());
    Claims {
        aud: resource.to_owned(),
        iss: iss.clone(),
        iat: issued,
        nbf: issued,
        exp: expiry(now, config.token_lifetime),
        // The configured spelling, so quota buckets don't split on the id's letter case.
        appid: config.client_id.clone(),
        appidacr: appidacr.to_owned(),
        idp: iss,
        oid: service_principal.clone(),
        roles: config.app_roles.clone(),
        sub: service_principal,
        tid: config.tenant_id.clone(),
        uti: URL_SAFE_NO_PAD.encode(uti),
        ver: "1.0".to_owned(),
    }
}

/// `exp` in whole seconds, rounded up so the token lives at least `expires_in`; a lifetime
/// past the representable dates never expires.
fn expiry(now: OffsetDateTime, lifetime: Duration) -> i64 {
    let end = time::Duration::try_from(lifetime)
        .ok()
        .and_then(|d| now.checked_add(d));
    match end {
        Some(end) => end.unix_timestamp() + i64::from(end.nanosecond() > 0),
        None => i64::MAX,
    }
}

/// `GET /{tenant}/discovery[/v2.0]/keys`: the current signing key as a JWKS. The keys are the
/// same for every tenant at Entra, so `common` and `organizations` are served too.
pub(crate) async fn keys(
    State(state): State<SimState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let known = ["common", "organizations", state.config().tenant_id.as_str()];
    if !known.iter().any(|t| t.eq_ignore_ascii_case(&tenant)) {
        return AadError::tenant_not_found(&tenant).respond(state.clock().utc(), &headers);
    }
    let jwks = state.signer().jwks();
    json_response(StatusCode::OK, serde_json::to_vec(&jwks))
}
