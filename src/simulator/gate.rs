//! The steps every simulated request passes before its handler, in one place and in the order
//! the real services apply them: count, added latency, token check, 403, injected faults, quota.
//!
//! Each route gets this middleware with its [`Endpoint`] baked in, so handlers only do their
//! own work and the order cannot drift between routes.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::aad_error::AadError;
use super::error::ApiError;
use super::faults::Injected;
use super::quota::retry_after_secs;
use super::state::SimState;
use super::stats::{Counters, Endpoint};

/// Middleware for the Defender routes.
pub(crate) async fn defender(
    State((state, endpoint)): State<(SimState, Endpoint)>,
    request: Request,
    next: Next,
) -> Response {
    state.counters().request(endpoint);
    if let Some(traceparent) = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        state.traceparents().record(endpoint, traceparent);
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = match admit(&state, endpoint, request.headers()).await {
        Ok(()) => {
            let response = next.run(request).await;
            // The effect happened, but the client never learns it: as a lost response.
            if response.status().is_success() && state.faults().roll_lost_response(endpoint) {
                Counters::bump(&state.counters().faults_injected);
                ApiError::InternalServerError.into_response()
            } else {
                response
            }
        }
        Err(e) => e.into_response(),
    };
    tracing::debug!(
        endpoint = endpoint.name(),
        %method,
        %path,
        status = response.status().as_u16(),
        "simulated Defender request"
    );
    response
}

async fn admit(state: &SimState, endpoint: Endpoint, headers: &HeaderMap) -> Result<(), ApiError> {
    let latency = state.faults().latency(endpoint);
    if !latency.is_zero() {
        state.clock().sleep(latency).await;
    }
    let now = state.clock().now();
    let client = state.tokens().authenticate(headers, now)?;
    if state.faults().forbidden(endpoint) {
        Counters::bump(&state.counters().faults_injected);
        return Err(ApiError::Forbidden(missing_roles(endpoint)));
    }
    let injected = state.faults().roll(endpoint);
    match injected {
        Injected::Nothing => {}
        Injected::Throttle(wait) => {
            Counters::bump(&state.counters().faults_injected);
            return Err(ApiError::TooManyRequests(retry_after_secs(wait)));
        }
        Injected::Error => {
            Counters::bump(&state.counters().faults_injected);
            return Err(ApiError::InternalServerError);
        }
    }
    let admitted = state.quota().admit(endpoint, &client, now);
    if let Err(wait) = admitted {
        Counters::bump(&state.counters().throttled);
        return Err(ApiError::TooManyRequests(retry_after_secs(wait)));
    }
    Ok(())
}

/// The observed 403 wording, with each API's documented permissions.
fn missing_roles(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::RunScan => "Missing application roles. API required roles: Machine.Scan",
        Endpoint::Cancel => {
            "Missing application roles. API required roles: Machine.CollectForensics, Machine.Isolate, Machine.RestrictExecution, Machine.Scan, Machine.Offboard, Machine.StopAndQuarantine, Machine.LiveResponse"
        }
        _ => {
            "Missing application roles. API required roles: Machine.Read.All, Machine.ReadWrite.All"
        }
    }
}

/// Middleware for the token endpoints: faults answer in Entra's error shape.
pub(crate) async fn token(State(state): State<SimState>, request: Request, next: Next) -> Response {
    state.counters().request(Endpoint::Token);
    let latency = state.faults().latency(Endpoint::Token);
    if !latency.is_zero() {
        state.clock().sleep(latency).await;
    }
    let path = request.uri().path().to_owned();
    let injected = state.faults().roll(Endpoint::Token);
    let now = state.clock().utc();
    let response = match injected {
        Injected::Nothing => next.run(request).await,
        Injected::Throttle(wait) => {
            Counters::bump(&state.counters().faults_injected);
            AadError::throttled(retry_after_secs(wait)).respond(now, request.headers())
        }
        Injected::Error => {
            Counters::bump(&state.counters().faults_injected);
            AadError::unavailable().respond(now, request.headers())
        }
    };
    tracing::debug!(%path, status = response.status().as_u16(), "simulated token request");
    response
}
