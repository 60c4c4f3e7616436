//! The application's identity: which credential the settings configure, all or nothing.

use std::path::PathBuf;

use secrecy::SecretString;

use super::ConfigError;
use crate::credentials::ClientAuth;

/// The application's identity and how it proves it.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub tenant_id: String,
    pub client_id: String,
    pub auth: ClientAuth,
}

/// Picks the credential the way Azure Identity does: a client secret first, then a
/// certificate, then workload identity federation.
pub(super) fn client_auth(
    secret: Option<SecretString>,
    certificate: Option<(PathBuf, bool)>,
    federated_token_file: Option<PathBuf>,
) -> Option<ClientAuth> {
    let nonempty = |p: &PathBuf| !p.as_os_str().is_empty();
    secret
        .map(ClientAuth::Secret)
        .or_else(|| {
            certificate
                .filter(|(path, _)| nonempty(path))
                .map(|(path, send_chain)| ClientAuth::Certificate { path, send_chain })
        })
        .or_else(|| {
            federated_token_file
                .filter(nonempty)
                .map(|token_file| ClientAuth::Federated { token_file })
        })
}

pub(super) fn credentials(
    tenant_id: Option<String>,
    client_id: Option<String>,
    auth: Option<ClientAuth>,
) -> Result<Option<Credentials>, ConfigError> {
    let tenant_id = tenant_id.filter(|s| !s.trim().is_empty());
    let client_id = client_id.filter(|s| !s.trim().is_empty());
    match (tenant_id, client_id, auth) {
        (None, None, None) => Ok(None),
        (Some(tenant_id), Some(client_id), Some(auth)) => Ok(Some(Credentials {
            tenant_id,
            client_id,
            auth,
        })),
        (tenant, client, auth) => {
            let missing: Vec<_> = [
                (tenant.is_none(), "AZURE_TENANT_ID"),
                (client.is_none(), "AZURE_CLIENT_ID"),
                (
                    auth.is_none(),
                    "one of AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE",
                ),
            ]
            .into_iter()
            .filter_map(|(missing, name)| missing.then_some(name))
            .collect();
            Err(ConfigError::IncompleteCredentials {
                missing: missing.join(" and "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_credentials_name_what_is_missing() {
        let err = credentials(Some("t".into()), None, None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("AZURE_CLIENT_ID and one of AZURE_CLIENT_SECRET"),
            "{text}"
        );
        assert!(credentials(None, None, None).unwrap().is_none());
    }

    #[test]
    fn the_secret_wins_then_the_certificate_then_workload_identity() {
        let secret = Some(SecretString::from("s"));
        let cert = Some((PathBuf::from("/c.pem"), false));
        let token = Some(PathBuf::from("/var/run/token"));
        let kind = |auth: Option<ClientAuth>| auth.map(|a| a.kind().as_str());
        assert_eq!(
            kind(client_auth(secret, cert.clone(), token.clone())),
            Some("client_secret")
        );
        assert_eq!(
            kind(client_auth(None, cert, token.clone())),
            Some("client_certificate")
        );
        assert_eq!(
            kind(client_auth(None, None, token)),
            Some("workload_identity")
        );
        assert_eq!(
            kind(client_auth(None, Some((PathBuf::new(), false)), None)),
            None
        );
    }
}
