//! The Defender for Endpoint REST API: typed calls ([`DefenderClient`]) that send through
//! an [`UpstreamService`] (the stack of [`crate::outbound`]) to reqwest ([`HttpService`]).

mod caller_message;
mod client;
#[cfg(test)]
mod decode_props;
mod error;
mod http_service;
pub mod model;
pub mod odata;

use std::net::IpAddr;

use tower::util::BoxCloneSyncService;
use url::Url;

// The call types are the client's vocabulary too; they live in the leaf `call`.
pub use crate::call::{Api, CallContext, Deadline, QueueObserver, QuotaCaller, Request, Response};
pub use client::{ActionQuery, DefenderClient, SCAN_ACTION_TYPE, SkippedAction};
pub use error::{ApiError, Error, TransportKind};
pub use http_service::HttpService;

/// The outbound stack as one cloneable, shareable service (built by [`crate::outbound::stack`]).
pub type UpstreamService = BoxCloneSyncService<Request, Response, Error>;

/// Why a base URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BaseUrlError {
    #[error("`{0}` is not a URL")]
    NotAUrl(String),
    #[error("`{0}` must use https:// (plain http:// is accepted only for loopback hosts)")]
    NotHttps(String),
    #[error("`{0}` must not carry credentials, a query or a fragment")]
    Extra(String),
}

/// Parses a Defender API or token authority base URL. `http://` is accepted only for loopback
/// hosts (the simulator, a local proxy): a bearer token or a client secret must never cross a
/// network in clear text.
pub fn parse_base_url(raw: &str) -> Result<Url, BaseUrlError> {
    let url = Url::parse(raw.trim()).map_err(|_| BaseUrlError::NotAUrl(raw.to_owned()))?;
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(BaseUrlError::Extra(raw.to_owned()));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(BaseUrlError::NotHttps(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        assert!(parse_base_url("https://api.security.microsoft.com").is_ok());
        assert!(parse_base_url("http://127.0.0.1:8443").is_ok());
        assert!(parse_base_url("http://[::1]:8443/").is_ok());
        assert!(parse_base_url("http://localhost:1").is_ok());
        assert_eq!(
            parse_base_url("http://api.security.microsoft.com"),
            Err(BaseUrlError::NotHttps(
                "http://api.security.microsoft.com".into()
            ))
        );
        assert!(parse_base_url("http://10.0.0.1").is_err());
        assert!(parse_base_url("ftp://127.0.0.1").is_err());
        assert!(parse_base_url("https://user:pw@host").is_err());
        assert!(parse_base_url("not a url").is_err());
    }
}
