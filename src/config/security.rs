//! Inbound security from the merged settings: TLS, JWT and policy settings that make sense
//! together, or the setting to fix.

use super::Values;
use crate::security::{JwtSettings, Policy, SecuritySettings, TlsSettings, jwt};

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

/// The inbound security settings from the merged settings; incomplete combinations are
/// refused.
pub fn resolve(settings: &Values) -> Result<SecuritySettings, SettingError> {
    let cert = settings.tls_cert.clone();
    let key = settings.tls_key.clone();
    let client_ca = settings.tls_client_ca.clone();
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
    let jwks = settings.jwks.clone();
    let issuer = settings.jwt_issuer.clone();
    let audience = settings.jwt_audience.clone();
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
    let policy = settings.policy.clone().map(Policy::new);
    if let Some((pattern, share)) = policy.as_ref().and_then(Policy::invalid_share) {
        return Err(invalid(
            "policy",
            format!("quota_share of \"{pattern}\" is {share}; it must be above 0 and at most 1"),
        ));
    }
    let mtls = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if policy.is_some() && !mtls && jwt.is_none() {
        return Err(invalid(
            "policy",
            "needs authenticated callers: set SCAN_GATEWAY_TLS_CLIENT_CA or SCAN_GATEWAY_JWKS",
        ));
    }
    Ok(SecuritySettings { tls, jwt, policy })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::ConfigArgs, security::Role};

    /// Resolves one layer of settings (flags, or the file) over the defaults.
    fn resolved(layer: ConfigArgs) -> Result<SecuritySettings, SettingError> {
        resolve(&layer.resolve().expect("the other settings are valid"))
    }

    #[test]
    fn nothing_configured_means_no_checks() {
        let s = resolved(ConfigArgs::default()).unwrap();
        assert!(s.tls.is_none() && s.jwt.is_none() && s.policy.is_none());
        assert!(!s.authenticates());
    }

    #[test]
    fn incomplete_combinations_are_refused() {
        let only_cert = ConfigArgs {
            tls_cert: Some("c".into()),
            ..ConfigArgs::default()
        };
        assert_eq!(
            resolved(only_cert).unwrap_err().setting,
            "SCAN_GATEWAY_TLS_KEY"
        );
        let only_jwks = ConfigArgs {
            jwks: Some("/jwks.json".into()),
            ..ConfigArgs::default()
        };
        assert!(resolved(only_jwks).is_err());
        let policy_alone = ConfigArgs {
            policy: Some([("a".to_owned(), Role::Scan.into())].into()),
            ..ConfigArgs::default()
        };
        assert_eq!(resolved(policy_alone).unwrap_err().setting, "policy");
    }

    #[test]
    fn flags_win_over_the_file() {
        let args = ConfigArgs {
            jwks: Some("/from/flag".into()),
            jwt_issuer: Some("iss".into()),
            ..ConfigArgs::default()
        };
        let file = ConfigArgs {
            jwks: Some("/from/file".into()),
            jwt_audience: Some("aud".into()),
            ..ConfigArgs::default()
        };
        let s = resolved(args.or(file)).unwrap();
        let jwt = s.jwt.unwrap();
        assert_eq!(jwt.jwks, jwt::JwksSource::File("/from/flag".into()));
        assert_eq!((jwt.issuer.as_str(), jwt.audience.as_str()), ("iss", "aud"));
        assert!(s.tls.is_none());
    }
}
