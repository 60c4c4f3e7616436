//! Who may call the gateway: inbound TLS (optionally mutual), bearer JWTs checked against a
//! JWKS, a policy mapping caller identities to roles, and the limits of each caller. The
//! layers that apply them on the gRPC server are in `inbound`; health and reflection stay
//! open.
//!
//! With none of it configured the gateway behaves as before: plaintext, every caller allowed,
//! audited as `unauthenticated`.

pub mod der;
pub mod jwt;
pub mod limits;
pub mod policy;
pub mod tls;

use std::path::PathBuf;

use serde::Deserialize;

pub use limits::{CallerLimits, LimitKind};
pub use policy::{Policy, Role, Rule};

/// The authenticated caller, put in the request's extensions by `inbound::authenticate`: the URI (else
/// DNS) SAN of its client certificate, or the `sub` of its JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// Flags of `serve` for inbound security; each also reads its environment variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct SecurityArgs {
    /// PEM certificate chain of the gRPC port; with SCAN_GATEWAY_TLS_KEY turns TLS on
    /// (reloaded when the file changes).
    #[arg(long, env = "SCAN_GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "SCAN_GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle of client certificates: turns on mutual TLS (required unless JWTs are
    /// also accepted); the caller is the certificate's URI SAN, else its DNS SAN.
    #[arg(long, env = "SCAN_GATEWAY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// JWKS verifying callers' bearer JWTs: a file path (reloaded when it changes) or an
    /// https URL (refreshed every 5 minutes).
    #[arg(long, env = "SCAN_GATEWAY_JWKS")]
    pub jwks: Option<String>,
    /// Required `iss` of callers' JWTs.
    #[arg(long, env = "SCAN_GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of callers' JWTs.
    #[arg(long, env = "SCAN_GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

/// The same settings in the config file (top-level keys `tls_cert`, ..., and a `[policy]`
/// table of `"identity pattern" = "scan" | "read"`).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct SecurityFile {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub jwks: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub policy: Option<std::collections::BTreeMap<String, Rule>>,
}

/// Resolved inbound security settings.
#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    pub tls: Option<TlsSettings>,
    pub jwt: Option<JwtSettings>,
    pub policy: Option<Policy>,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub jwks: jwt::JwksSource,
    pub issuer: String,
    pub audience: String,
}

/// An inbound security setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct SettingError {
    pub setting: &'static str,
    pub reason: String,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> SettingError {
    SettingError {
        setting,
        reason: reason.into(),
    }
}

impl SecuritySettings {
    /// Flags and environment win over the file; incomplete combinations are refused.
    pub fn resolve(args: &SecurityArgs, file: SecurityFile) -> Result<Self, SettingError> {
        let cert = args.tls_cert.clone().or(file.tls_cert);
        let key = args.tls_key.clone().or(file.tls_key);
        let client_ca = args.tls_client_ca.clone().or(file.tls_client_ca);
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert,
                key,
                client_ca,
            }),
            (None, None) if client_ca.is_none() => None,
            (None, None) => {
                return Err(invalid(
                    "SCAN_GATEWAY_TLS_CLIENT_CA",
                    "needs SCAN_GATEWAY_TLS_CERT and SCAN_GATEWAY_TLS_KEY",
                ));
            }
            (Some(_), None) => return Err(invalid("SCAN_GATEWAY_TLS_KEY", "must be set too")),
            (None, Some(_)) => return Err(invalid("SCAN_GATEWAY_TLS_CERT", "must be set too")),
        };
        let jwks = args.jwks.clone().or(file.jwks);
        let issuer = args.jwt_issuer.clone().or(file.jwt_issuer);
        let audience = args.jwt_audience.clone().or(file.jwt_audience);
        let jwt = match (jwks, issuer, audience) {
            (None, None, None) => None,
            (Some(jwks), Some(issuer), Some(audience)) => Some(JwtSettings {
                jwks: jwt::JwksSource::parse(&jwks)
                    .map_err(|reason| invalid("SCAN_GATEWAY_JWKS", reason))?,
                issuer,
                audience,
            }),
            _ => {
                return Err(invalid(
                    "SCAN_GATEWAY_JWKS",
                    "SCAN_GATEWAY_JWKS, SCAN_GATEWAY_JWT_ISSUER and SCAN_GATEWAY_JWT_AUDIENCE go together",
                ));
            }
        };
        let policy = file.policy.map(Policy::new);
        if let Some((pattern, share)) = policy.as_ref().and_then(Policy::invalid_share) {
            return Err(invalid(
                "policy",
                format!(
                    "quota_share of \"{pattern}\" is {share}; it must be above 0 and at most 1"
                ),
            ));
        }
        let mtls = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if policy.is_some() && !mtls && jwt.is_none() {
            return Err(invalid(
                "policy",
                "needs authenticated callers: set SCAN_GATEWAY_TLS_CLIENT_CA or SCAN_GATEWAY_JWKS",
            ));
        }
        Ok(Self { tls, jwt, policy })
    }

    /// Whether callers must prove who they are.
    pub fn authenticates(&self) -> bool {
        self.jwt.is_some() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_configured_means_no_checks() {
        let s =
            SecuritySettings::resolve(&SecurityArgs::default(), SecurityFile::default()).unwrap();
        assert!(s.tls.is_none() && s.jwt.is_none() && s.policy.is_none());
        assert!(!s.authenticates());
    }

    #[test]
    fn incomplete_combinations_are_refused() {
        let only_cert = SecurityArgs {
            tls_cert: Some("c".into()),
            ..SecurityArgs::default()
        };
        assert_eq!(
            SecuritySettings::resolve(&only_cert, SecurityFile::default())
                .unwrap_err()
                .setting,
            "SCAN_GATEWAY_TLS_KEY"
        );
        let only_jwks = SecurityArgs {
            jwks: Some("/jwks.json".into()),
            ..SecurityArgs::default()
        };
        assert!(SecuritySettings::resolve(&only_jwks, SecurityFile::default()).is_err());
        let policy_alone = SecurityFile {
            policy: Some([("a".to_owned(), Role::Scan.into())].into()),
            ..SecurityFile::default()
        };
        assert_eq!(
            SecuritySettings::resolve(&SecurityArgs::default(), policy_alone)
                .unwrap_err()
                .setting,
            "policy"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let args = SecurityArgs {
            jwks: Some("/from/flag".into()),
            jwt_issuer: Some("iss".into()),
            ..SecurityArgs::default()
        };
        let file = SecurityFile {
            jwks: Some("/from/file".into()),
            jwt_audience: Some("aud".into()),
            ..SecurityFile::default()
        };
        let s = SecuritySettings::resolve(&args, file).unwrap();
        let jwt = s.jwt.unwrap();
        assert_eq!(jwt.jwks, jwt::JwksSource::File("/from/flag".into()));
        assert_eq!((jwt.issuer.as_str(), jwt.audience.as_str()), ("iss", "aud"));
        assert!(s.tls.is_none());
    }
}
