//! The Defender for Endpoint REST API: typed calls ([`DefenderClient`]) over a tower stack of
//! layers ([`stack`]) over reqwest ([`HttpService`]).

mod client;
#[cfg(test)]
mod decode_props;
mod error;
mod http_service;
pub mod model;
pub mod odata;

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::time::Instant;
use tower::{ServiceBuilder, util::BoxCloneSyncService};
use url::Url;

pub(crate) use client::retry_after;
pub use client::{ActionQuery, CallContext, DefenderClient, SCAN_ACTION_TYPE};
pub(crate) use error::describe as describe_error;
pub use error::{ApiError, Error, TransportKind};
pub use http_service::HttpService;

use crate::{
    layers::{
        auth::{AuthLayer, TokenCache},
        quota::QuotaLayer,
        trace::TraceLayer,
    },
    metrics::Metrics,
    quota::Quota,
};

/// A request to the Defender API: a complete `http::Request` tagged with its [`Api`].
pub type Request = http::Request<Bytes>;
/// A whole, buffered answer.
pub type Response = http::Response<Bytes>;
/// The stack as one cloneable, shareable service.
pub type UpstreamService = BoxCloneSyncService<Request, Response, Error>;

/// The Defender APIs the gateway calls. Each has its own quota upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    RunScan,
    GetAction,
    ListActions,
    CancelAction,
}

impl Api {
    pub const ALL: [Api; 4] = [
        Api::RunScan,
        Api::GetAction,
        Api::ListActions,
        Api::CancelAction,
    ];

    /// A stable label for metrics, spans and configuration keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::RunScan => "run_antivirus_scan",
            Api::GetAction => "get_machine_action",
            Api::ListActions => "list_machine_actions",
            Api::CancelAction => "cancel_machine_action",
        }
    }
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Request extension: the caller's deadline. Layers that wait (quota) or call out (HTTP)
/// never go past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

/// Request extension: told when the request has to wait for quota, with its queue position
/// and the estimated start. `RunScan` turns these into `queued` events.
#[derive(Clone)]
pub struct QueueObserver(pub Arc<dyn Fn(usize, Instant) + Send + Sync>);

impl fmt::Debug for QueueObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueObserver")
    }
}

/// Request extension: who an upstream call is made for. The quota serves callers in turn
/// and keeps each to its `share` of every API's quota.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaCaller {
    pub id: Arc<str>,
    /// Share (0..=1) of each API's quota; `None` is no cap.
    pub share: Option<f64>,
}

impl QuotaCaller {
    /// The gateway itself (the watcher's refreshes).
    pub fn gateway() -> Self {
        Self {
            id: Arc::from("scan-gateway"),
            share: None,
        }
    }
}

/// A copy of a request for a retry. Requests hold their body as `Bytes`, so this is cheap.
pub(crate) fn clone_request(request: &Request) -> Request {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}

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

/// Settings of the outbound stack.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Longest time one HTTP exchange may take.
    pub request_timeout: Duration,
    /// Longest time a call may wait for quota before it is refused.
    pub max_quota_wait: Duration,
}

/// Builds the whole outbound stack, outermost layer first.
pub fn stack(
    http: HttpService,
    tokens: Arc<TokenCache>,
    quota: Arc<Quota>,
    metrics: Metrics,
) -> UpstreamService {
    let service = ServiceBuilder::new()
        // One span and one metric sample per logical upstream call, including the quota wait.
        .layer(TraceLayer::new(metrics))
        // Wait (in order) for a free call in the API's quota, or refuse at once.
        .layer(QuotaLayer::new(quota))
        // Innermost so a 401 retry reuses the quota slot already granted for the call.
        .layer(AuthLayer::new(tokens))
        .service(http);
    BoxCloneSyncService::new(service)
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
