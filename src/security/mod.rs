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

pub use limits::{CallerLimits, ConnectionLimits, LimitKind};
pub use policy::{MaxPriority, Policy, Role, Rule};

/// The authenticated caller, put in the request's extensions by `inbound::authenticate`: the URI (else
/// DNS) SAN of its client certificate, or the `sub` of its JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

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

impl SecuritySettings {
    /// Whether callers must prove who they are.
    pub fn authenticates(&self) -> bool {
        self.jwt.is_some() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}
