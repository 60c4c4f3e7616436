//! The outbound side: the tower stack between the typed client ([`crate::upstream`]) and
//! HTTP, one concern per file, assembled in one place, [`stack`].

pub mod auth;
mod metrics;
pub mod quota;
pub mod ready;
pub mod retry;
mod step;
pub mod trace;

use std::sync::Arc;

use tower::{ServiceBuilder, util::BoxCloneSyncService};

pub use auth::Authorize;
pub use metrics::UpstreamMetrics;
pub use quota::Admit;
pub use ready::TokenReady;
pub use retry::Retry;
pub use trace::Trace;

use crate::{
    credentials::TokenCache,
    quota::Quota,
    upstream::{HttpService, UpstreamService},
};

/// Builds the whole outbound stack, outermost layer first.
pub fn stack(
    http: HttpService,
    tokens: Arc<TokenCache>,
    quota: Arc<Quota>,
    metrics: UpstreamMetrics,
) -> UpstreamService {
    let service = ServiceBuilder::new()
        // One span and one metric sample per logical upstream call: quota waits and resends
        // included.
        .layer(Trace::layer(metrics.clone()))
        // The one retry policy (429, 401, connection refused; never an unknown outcome).
        // Above the quota, so that every resend is admitted like a first call.
        .layer(Retry::layer(quota.clone(), metrics))
        // A valid token before the slot: a slow token fetch must not carry calls admitted in
        // one quota window into the next.
        .layer(TokenReady::layer(tokens.clone()))
        // Wait (in turn) for a free call in the API's quota, or refuse at once.
        .layer(Admit::layer(quota))
        // The bearer token (cached by now); a refused one is forgotten here.
        .layer(Authorize::layer(tokens))
        .service(http);
    BoxCloneSyncService::new(service)
}
