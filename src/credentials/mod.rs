//! Microsoft Entra ID credentials for the client-credentials grant, chosen from the
//! environment the way Azure Identity's environment and workload-identity credentials choose:
//!
//! | kind | variables |
//! |---|---|
//! | client secret | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` |
//! | client certificate | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_CERTIFICATE_PATH` (PEM, certificate and key) |
//! | workload identity | `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE` |
//!
//! Files are read again for every token request: the kubelet rotates the projected
//! service-account token, and certificate rotation (cert-manager, Key Vault CSI) replaces the
//! PEM in place.

pub(crate) mod cache;
mod certificate;
mod endpoint;
mod hints;
mod metrics;

use std::{fmt, future::Future, path::PathBuf, pin::Pin};

use secrecy::{ExposeSecret, SecretString};

pub use cache::TokenCache;
pub use certificate::{Certificate, CertificateError};
pub use endpoint::{Token, TokenEndpoint, TokenError};
pub use metrics::TokenMetrics;

/// The kind of credential, as a metric label and in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    ClientSecret,
    ClientCertificate,
    WorkloadIdentity,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::ClientSecret => "client_secret",
            CredentialKind::ClientCertificate => "client_certificate",
            CredentialKind::WorkloadIdentity => "workload_identity",
        }
    }
}

/// How the application proves its identity to the token endpoint.
#[derive(Clone)]
pub enum ClientAuth {
    /// `client_secret` in the form.
    Secret(SecretString),
    /// A JWT client assertion signed with the certificate's key; `send_chain` adds the `x5c`
    /// header (`AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`, for subject-name/issuer authentication).
    Certificate { path: PathBuf, send_chain: bool },
    /// The projected Kubernetes service-account token, sent as the client assertion.
    Federated { token_file: PathBuf },
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAuth::Secret(_) => f.write_str("Secret([REDACTED])"),
            ClientAuth::Certificate { path, send_chain } => f
                .debug_struct("Certificate")
                .field("path", path)
                .field("send_chain", send_chain)
                .finish(),
            ClientAuth::Federated { token_file } => f
                .debug_struct("Federated")
                .field("token_file", token_file)
                .finish(),
        }
    }
}

impl ClientAuth {
    pub fn kind(&self) -> CredentialKind {
        match self {
            ClientAuth::Secret(_) => CredentialKind::ClientSecret,
            ClientAuth::Certificate { .. } => CredentialKind::ClientCertificate,
            ClientAuth::Federated { .. } => CredentialKind::WorkloadIdentity,
        }
    }

    /// Fails early (at start-up) on a file that cannot be used, naming the variable.
    pub fn check(&self) -> Result<(), TokenError> {
        match self {
            ClientAuth::Secret(_) => Ok(()),
            ClientAuth::Certificate { path, .. } => Certificate::load(path)
                .map(drop)
                .map_err(|err| TokenError::Credential(err.to_string())),
            ClientAuth::Federated { token_file } => read_federated_token(token_file).map(drop),
        }
    }
}

/// Anything that can fetch a fresh token.
pub trait TokenSource: Send + Sync + 'static {
    fn kind(&self) -> CredentialKind;
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send + '_>>;
}

/// A credential of any kind against one token endpoint.
pub struct Credential {
    endpoint: TokenEndpoint,
    client_id: String,
    auth: ClientAuth,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .finish()
    }
}

/// The OAuth2 client assertion type for JWTs (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl Credential {
    pub fn new(endpoint: TokenEndpoint, client_id: String, auth: ClientAuth) -> Self {
        Self {
            endpoint,
            client_id,
            auth,
        }
    }

    async fn request(&self) -> Result<Token, TokenError> {
        let kind = self.auth.kind();
        let proof = match &self.auth {
            ClientAuth::Secret(secret) => ("client_secret", secret.clone()),
            ClientAuth::Certificate { path, send_chain } => {
                let certificate = Certificate::load(path)
                    .map_err(|err| TokenError::Credential(err.to_string()))?;
                let now = self.endpoint.clock().utc().unix_timestamp();
                let assertion = certificate
                    .client_assertion(
                        &self.client_id,
                        self.endpoint.url().as_str(),
                        now,
                        *send_chain,
                    )
                    .map_err(|err| TokenError::Credential(err.to_string()))?;
                ("client_assertion", assertion)
            }
            ClientAuth::Federated { token_file } => {
                ("client_assertion", read_federated_token(token_file)?)
            }
        };
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.endpoint.scope()),
        ];
        if proof.0 == "client_assertion" {
            form.push(("client_assertion_type", JWT_BEARER));
        }
        form.push((proof.0, proof.1.expose_secret()));
        self.endpoint.request(&form, kind).await
    }
}

impl TokenSource for Credential {
    fn kind(&self) -> CredentialKind {
        self.auth.kind()
    }

    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send + '_>> {
        Box::pin(self.request())
    }
}

/// Reads the projected service-account token; errors name the variable, never the content.
fn read_federated_token(path: &PathBuf) -> Result<SecretString, TokenError> {
    let content = std::fs::read_to_string(path).map_err(|err| {
        TokenError::Credential(format!(
            "AZURE_FEDERATED_TOKEN_FILE {} cannot be read: {err} (is the workload identity webhook injecting the projected token?)",
            path.display()
        ))
    })?;
    let token = content.trim();
    if token.is_empty() {
        return Err(TokenError::Credential(format!(
            "AZURE_FEDERATED_TOKEN_FILE {} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(token.to_owned()))
}
