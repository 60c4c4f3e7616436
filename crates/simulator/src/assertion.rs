//! JWT client assertions, checked as Entra ID checks them:
//!
//! - a certificate assertion (header `x5t#S256` or `x5t`) must name the certificate registered
//!   on the application, verify against its public key (`PS256` or `RS256`), be addressed to
//!   this tenant's token endpoint, be issued by and about the client, and be within its time
//!   range;
//! - any other assertion is a federated token (workload identity): it must equal the current
//!   content of the configured token file (the simulator's stand-in for trusting the cluster's
//!   OIDC issuer), and not be expired.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use super::aad_error::AadError;
use super::config::SimulatorConfig;

/// Tolerated clock skew for `nbf`, as Entra allows a few minutes.
const SKEW_SECS: i64 = 300;

type Json = Map<String, Value>;

/// Verifies `jwt` for `client_id` at `now_unix`.
pub(crate) fn verify(
    jwt: &str,
    config: &SimulatorConfig,
    tenant: &str,
    client_id: &str,
    now_unix: i64,
) -> Result<(), AadError> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [head, body, signature] = parts[..] else {
        return Err(AadError::assertion_malformed());
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok();
    let json = |part: &str| -> Option<Json> { serde_json::from_slice(&decode(part)?).ok() };
    let (Some(header), Some(claims), Some(signature)) = (json(head), json(body), decode(signature))
    else {
        return Err(AadError::assertion_malformed());
    };
    if signature.is_empty() {
        return Err(AadError::assertion_malformed());
    }

    let thumbprint = header
        .get("x5t#S256")
        .map(|t| (t, &aws_lc_rs::digest::SHA256))
        .or_else(|| {
            header
                .get("x5t")
                .map(|t| (t, &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY))
        });
    match thumbprint {
        Some((thumbprint, algorithm)) => {
            let thumbprint = thumbprint.as_str().unwrap_or_default();
            let registered = config.client_certificate.as_deref().filter(|der| {
                URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(algorithm, der)) == thumbprint
            });
            let Some(der) = registered else {
                return Err(AadError::certificate_not_registered(thumbprint, client_id));
            };
            verify_signature(der, &header, head, body, &signature)?;
            check_certificate_claims(&claims, tenant, client_id, now_unix)
        }
        None => check_federated(jwt, &claims, config, client_id, now_unix),
    }
}

fn verify_signature(
    der: &[u8],
    header: &Json,
    head: &str,
    body: &str,
    signature: &[u8],
) -> Result<(), AadError> {
    let algorithm = match header.get("alg").and_then(Value::as_str) {
        Some("PS256") => webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        Some("RS256") => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
        _ => return Err(AadError::assertion_claims("alg must be PS256 or RS256")),
    };
    let certificate = rustls_pki_types::CertificateDer::from(der);
    let end_entity =
        webpki::EndEntityCert::try_from(&certificate).map_err(|_| AadError::signature_invalid())?;
    end_entity
        .verify_signature(algorithm, format!("{head}.{body}").as_bytes(), signature)
        .map_err(|_| AadError::signature_invalid())
}

fn check_certificate_claims(
    claims: &Json,
    tenant: &str,
    client_id: &str,
    now_unix: i64,
) -> Result<(), AadError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    let audience = text("aud").trim_end_matches('/').to_ascii_lowercase();
    let tenant = tenant.to_ascii_lowercase();
    if !audience.ends_with(&format!("/{tenant}/oauth2/v2.0/token"))
        && !audience.ends_with(&format!("/{tenant}/oauth2/token"))
    {
        return Err(AadError::assertion_claims(
            "aud must be this tenant's token endpoint",
        ));
    }
    if !text("iss").eq_ignore_ascii_case(client_id) || !text("sub").eq_ignore_ascii_case(client_id)
    {
        return Err(AadError::assertion_claims(
            "iss and sub must be the client id",
        ));
    }
    check_time(claims, now_unix)
}

fn check_federated(
    jwt: &str,
    claims: &Json,
    config: &SimulatorConfig,
    client_id: &str,
    now_unix: i64,
) -> Result<(), AadError> {
    let current = config
        .federated_token_file
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok());
    if current.as_deref().map(str::trim) != Some(jwt) {
        return Err(AadError::no_federated_match(client_id));
    }
    check_time(claims, now_unix)
}

fn check_time(claims: &Json, now_unix: i64) -> Result<(), AadError> {
    let number = |name: &str| claims.get(name).and_then(Value::as_i64);
    match (number("exp"), number("nbf")) {
        (None, _) => Err(AadError::assertion_claims("exp is required")),
        (Some(exp), _) if exp <= now_unix => Err(AadError::assertion_expired()),
        (_, Some(nbf)) if nbf > now_unix + SKEW_SECS => Err(AadError::assertion_expired()),
        _ => Ok(()),
    }
}
