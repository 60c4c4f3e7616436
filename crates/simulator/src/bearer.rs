//! The `Authorization: Bearer` check of the Defender routes: the token must be a JWT signed by
//! the simulator's current key (see `jwt.rs`), issued for this tenant, for a Defender audience,
//! and within its time range. What the caller may do (its `roles`) is the gate's next check.
//!
//! Revoking every token rotates the key, so no list of issued tokens is kept.

use axum::http::{HeaderMap, header};
use time::OffsetDateTime;

use super::audience;
use super::error::ApiError;
use super::jwt::{Signer, issuer};

pub(crate) const MISSING: &str = "Unauthorized request - Authorization header is missing.";
pub(crate) const MALFORMED: &str =
    "Unauthorized request - Authorization header must be 'Bearer {access token}'.";
pub(crate) const INVALID: &str = "Unauthorized request - the access token is invalid.";
pub(crate) const EXPIRED: &str = "Unauthorized request - the access token has expired.";
pub(crate) const NOT_YET_VALID: &str = "Unauthorized request - the access token is not valid yet.";
/// Issue 9246: a token for another resource gets 403, not 401 [obs]; the wording is ours.
pub(crate) const WRONG_AUDIENCE: &str =
    "The access token's audience is not the Microsoft Defender for Endpoint API.";

/// Who is calling, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The application (`appid`), as the quota counts it.
    pub(crate) client_id: String,
    pub(crate) roles: Vec<String>,
}

/// The caller of a request, or the 401/403 to answer.
pub(crate) fn authenticate(
    signer: &Signer,
    headers: &HeaderMap,
    tenant: &str,
    now: OffsetDateTime,
) -> Result<Caller, ApiError> {
    let token = bearer(headers)?;
    let claims = signer.verify(token).map_err(|e| {
        tracing::debug!(reason = %e, "simulated API refused a bearer token");
        ApiError::Unauthorized(INVALID)
    })?;
    if !claims.tid.eq_ignore_ascii_case(tenant) || claims.iss != issuer(&claims.tid) {
        return Err(ApiError::Unauthorized(INVALID));
    }
    // `exp` is in whole seconds: the token is refused from that second on.
    if now.unix_timestamp_nanos() >= i128::from(claims.exp) * 1_000_000_000 {
        return Err(ApiError::Unauthorized(EXPIRED));
    }
    if now.unix_timestamp() < claims.nbf {
        return Err(ApiError::Unauthorized(NOT_YET_VALID));
    }
    if !audience::is_defender(&claims.aud) {
        return Err(ApiError::Forbidden(WRONG_AUDIENCE.to_owned()));
    }
    Ok(Caller {
        client_id: claims.appid,
        roles: claims.roles,
    })
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized(MISSING))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized(MALFORMED))?;
    match value.trim().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::Unauthorized(MALFORMED)),
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::jwt::Claims;

    const TENANT: &str = "00000000-0000-0000-0000-000000000001";

    fn auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    fn claims() -> Claims {
        Claims {
            aud: "https://api.securitycenter.microsoft.com".into(),
            iss: issuer(TENANT),
            iat: 1_795_684_145,
            nbf: 1_795_684_145,
            exp: 1_795_688_045,
            appid: "client".into(),
            appidacr: "1".into(),
            idp: issuer(TENANT),
            oid: "sp".into(),
            roles: vec!["Machine.Scan".into()],
            sub: "sp".into(),
            tid: TENANT.into(),
            uti: "u".into(),
            ver: "1.0".into(),
        }
    }

    fn check(signer: &Signer, claims: &Claims, now: OffsetDateTime) -> Result<Caller, ApiError> {
        let token = signer.sign(claims).unwrap();
        authenticate(signer, &auth(&format!("bearer {token}")), TENANT, now)
    }

    #[test]
    fn a_valid_token_names_the_client_and_its_roles() {
        let signer = Signer::generate();
        let now = datetime!(2026-11-26 09:14:05 UTC);
        assert_eq!(
            check(&signer, &claims(), now),
            Ok(Caller {
                client_id: "client".into(),
                roles: vec!["Machine.Scan".into()]
            })
        );
    }

    #[test]
    fn time_tenant_issuer_and_audience_are_checked() {
        let signer = Signer::generate();
        let now = datetime!(2026-11-26 09:14:05 UTC);
        let refused = |change: fn(&mut Claims), now| {
            let mut c = claims();
            change(&mut c);
            check(&signer, &c, now).unwrap_err()
        };
        let at_exp = OffsetDateTime::from_unix_timestamp(1_795_688_045).unwrap();
        assert_eq!(refused(|_| {}, at_exp), ApiError::Unauthorized(EXPIRED));
        assert!(check(&signer, &claims(), at_exp - time::Duration::nanoseconds(1)).is_ok());
        assert_eq!(
            refused(|c| c.nbf = 1_795_684_446, now),
            ApiError::Unauthorized(NOT_YET_VALID)
        );
        assert_eq!(
            refused(
                |c| c.tid = "22222222-0000-0000-0000-000000000002".into(),
                now
            ),
            ApiError::Unauthorized(INVALID)
        );
        assert_eq!(
            refused(
                |c| c.iss = "https://login.microsoftonline.com/x/v2.0".into(),
                now
            ),
            ApiError::Unauthorized(INVALID)
        );
        assert_eq!(
            refused(|c| c.aud = "https://graph.microsoft.com".into(), now),
            ApiError::Forbidden(WRONG_AUDIENCE.into())
        );
    }

    #[test]
    fn header_shapes() {
        let signer = Signer::generate();
        let now = datetime!(2026-11-26 09:14:05 UTC);
        assert_eq!(
            authenticate(&signer, &HeaderMap::new(), TENANT, now),
            Err(ApiError::Unauthorized(MISSING))
        );
        for bad in ["Bearer", "Bearer  ", "Basic abc", "token"] {
            assert_eq!(
                authenticate(&signer, &auth(bad), TENANT, now),
                Err(ApiError::Unauthorized(MALFORMED)),
                "{bad}"
            );
        }
        assert_eq!(
            authenticate(&signer, &auth("Bearer nope"), TENANT, now),
            Err(ApiError::Unauthorized(INVALID))
        );
        // Signed by another simulator (or before a revocation): refused.
        let token = Signer::generate().sign(&claims()).unwrap();
        assert_eq!(
            authenticate(&signer, &auth(&format!("Bearer {token}")), TENANT, now),
            Err(ApiError::Unauthorized(INVALID))
        );
    }
}
