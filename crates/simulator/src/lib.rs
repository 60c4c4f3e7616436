//! A Microsoft Defender for Endpoint API simulator: the Entra ID token endpoint plus the
//! machine-action routes the gateway uses, faithful to `upstream-api.md` (status codes, error
//! bodies, JSON key order, timestamps, quota). Users point their own services at it; the
//! gateway's `serve --simulate` and its tests run against it.
//!
//! ```text
//! POST /{tenant}/oauth2/v2.0/token            client credentials, scope=<audience>/.default
//! POST /{tenant}/oauth2/token                 v1: resource=<audience>
//! GET  /{tenant}/discovery[/v2.0]/keys        JWKS: the key that signs access tokens
//! POST /api[/v1.0]/machines/{id}/runAntiVirusScan
//! GET  /api[/v1.0]/machineactions[?$filter=..&$top=..&$skip=..]
//! GET  /api[/v1.0]/machineactions/{id}
//! POST /api[/v1.0]/machineactions/{id}/cancel
//! GET  /simulator/stats | /simulator/machines
//! ```
//!
//! Everything is deterministic for a seed (inventory, action ids, outcomes, faults) except the
//! tokens (and their signing key) and error `target`s, and all time comes from [`Clock`], so tests use
//! `tokio::time::pause()`/`advance()` and never sleep.
#![forbid(unsafe_code)]

mod aad_error;
mod actions;
mod api;
mod assertion;
mod audience;
mod bearer;
mod cli;
mod config;
mod credentials;
mod error;
mod fault_spec;
mod faults;
mod gate;
mod handle;
mod history;
mod introspect;
mod inventory;
mod jwt;
mod odata;
mod query;
mod quota;
mod rng;
mod roles;
mod state;
mod stats;
mod timestamp;
mod token;
mod traceparents;
mod view;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub use actions::ActionStatus;
pub use cli::{Profile, QuotaSpec, RolesSpec, SimulatorArgs};
pub use config::{DuplicateMode, SimulatorConfig, default_quota};
pub use fault_spec::{ApiTarget, FaultSpec, FaultTarget};
pub use faults::{EndpointFaults, Faults, ResetPoint};
pub use handle::SimulatorHandle;
pub use inventory::Machine;
pub use roles::KNOWN as KNOWN_ROLES;
/// The clock [`Simulator::bind`] and [`SimState::new`] take; the gateway's `Clock` is this
/// type too, so a test can run both on one paused clock.
pub use scan_clock::Clock;
pub use state::SimState;
pub use stats::{Endpoint, Stats};
pub use traceparents::SeenTraceparent;

/// The simulator's routes; testable with `tower::ServiceExt::oneshot`, no socket needed.
pub fn app(state: SimState) -> Router {
    // Each route carries its own gate, so counting, faults and quota know the endpoint.
    let gate = |endpoint| from_fn_with_state((state.clone(), endpoint), gate::defender);
    let token_gate = || from_fn_with_state(state.clone(), gate::token);
    let mut router = Router::new()
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(token::v2).layer(token_gate()),
        )
        .route(
            "/{tenant}/oauth2/token",
            post(token::v1).layer(token_gate()),
        )
        // The public key of issued tokens, at Entra's v2.0 and v1 paths.
        .route("/{tenant}/discovery/v2.0/keys", get(token::keys))
        .route("/{tenant}/discovery/keys", get(token::keys))
        .route("/simulator/stats", get(introspect::stats))
        .route("/simulator/machines", get(introspect::machines));
    // The version segment is optional upstream; without it the latest (v1.0) is used.
    for prefix in ["/api", "/api/v1.0"] {
        router = router
            .route(
                &format!("{prefix}/machines/{{id}}/runAntiVirusScan"),
                post(api::run_scan).layer(gate(Endpoint::RunScan)),
            )
            .route(
                &format!("{prefix}/machineactions"),
                get(api::list).layer(gate(Endpoint::ListActions)),
            )
            .route(
                &format!("{prefix}/machineactions/{{id}}"),
                get(api::get_action).layer(gate(Endpoint::GetAction)),
            )
            .route(
                &format!("{prefix}/machineactions/{{id}}/cancel"),
                post(api::cancel).layer(gate(Endpoint::Cancel)),
            );
    }
    router.fallback(introspect::fallback).with_state(state)
}

/// A bound simulator, ready to serve.
#[derive(Debug)]
pub struct Simulator {
    listener: TcpListener,
    addr: SocketAddr,
    state: SimState,
}

impl Simulator {
    /// Binds first (port 0 allowed) so callers learn the address before serving.
    pub async fn bind(
        addr: SocketAddr,
        config: SimulatorConfig,
        clock: Clock,
    ) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            state: SimState::new(config, clock),
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Defender API base, e.g. `http://127.0.0.1:8443` (paths start with `/api`). An
    /// unspecified listen address (`0.0.0.0`, `::`) is reported as loopback, which is reachable.
    pub fn base_url(&self) -> String {
        format!("http://{}", reachable(self.addr))
    }

    /// Token authority: the same server; token endpoints are `{authority}/{tenant}/oauth2/v2.0/token`
    /// and `{authority}/{tenant}/oauth2/token`.
    pub fn authority_url(&self) -> String {
        self.base_url()
    }

    /// A handle on the state, usable while serving.
    pub fn handle(&self) -> SimulatorHandle {
        self.state.handle()
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.addr, "Defender API simulator listening");
        axum::serve(self.listener, app(self.state))
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// The address a local client can connect to: unspecified becomes loopback of the same family.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}
