//! The steps every simulated request passes before its handler, in one place and in the order
//! the real services apply them: count, added latency, token check, roles (403), injected
//! faults, quota;
//! and the faults applied to the answer after it (reset, lost, malformed).
//!
//! Each route gets this middleware with its [`Endpoint`] baked in, so handlers only do their
//! own work and the order cannot drift between routes.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::aad_error::AadError;
use super::bearer;
use super::error::ApiError;
use super::faults::{Injected, garble};
use super::quota::retry_after_secs;
use super::roles;
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
        Ok(reset_after_effect) => {
            let response = next.run(request).await;
            let answer_latency = state.faults().answer_latency(endpoint);
            if !answer_latency.is_zero() {
                state.clock().sleep(answer_latency).await;
            }
            if reset_after_effect {
                // The handler ran (a successful scan POST created its action), but the answer
                // never arrives: the connection breaks instead.
                Counters::bump(&state.counters().faults_injected);
                connection_reset()
            } else if !response.status().is_success() {
                response
            } else if state.faults().roll_lost_response(endpoint) {
                // The effect happened, but the client never learns it: as a lost response.
                Counters::bump(&state.counters().faults_injected);
                ApiError::InternalServerError.into_response()
            } else {
                malform(&state, endpoint, response).await
            }
        }
        Err(Refusal::Reset) => connection_reset(),
        Err(Refusal::Api(e)) => e.into_response(),
    };
    tracing::debug!(
        endpoint = endpoint.name(),
        %method,
        %path,
        status = response.status().as_u16(),
        reset = is_reset(&response),
        "simulated Defender request"
    );
    response
}

/// Why [`admit`] stopped a request before its handler.
enum Refusal {
    /// An HTTP error answer.
    Api(ApiError),
    /// No answer at all: the connection is dropped.
    Reset,
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

/// Lets a request through to its handler, or refuses it. `Ok(true)`: let it take effect, then
/// reset the connection instead of answering.
async fn admit(state: &SimState, endpoint: Endpoint, headers: &HeaderMap) -> Result<bool, Refusal> {
    let latency = state.faults().latency(endpoint);
    if !latency.is_zero() {
        state.clock().sleep(latency).await;
    }
    let now = state.clock().now();
    let caller = bearer::authenticate(
        &state.signer(),
        headers,
        &state.config().tenant_id,
        state.clock().utc_at(now),
    )?;
    if let Some(message) = roles::missing(endpoint, &caller.roles) {
        return Err(ApiError::Forbidden(message).into());
    }
    if state.faults().forbidden(endpoint) {
        Counters::bump(&state.counters().faults_injected);
        return Err(ApiError::Forbidden(roles::missing_message(endpoint, &[])).into());
    }
    let injected = state.faults().roll(endpoint);
    let reset_after_effect = match injected {
        Injected::Nothing => false,
        Injected::ResetAfterEffect => true,
        Injected::Throttle(wait) => {
            Counters::bump(&state.counters().faults_injected);
            return Err(ApiError::TooManyRequests(retry_after_secs(wait)).into());
        }
        Injected::Error => {
            Counters::bump(&state.counters().faults_injected);
            return Err(ApiError::InternalServerError.into());
        }
        Injected::Reset => {
            Counters::bump(&state.counters().faults_injected);
            return Err(Refusal::Reset);
        }
    };
    let admitted = state.quota().admit(endpoint, &caller.client_id, now);
    if let Err(wait) = admitted {
        Counters::bump(&state.counters().throttled);
        return Err(ApiError::TooManyRequests(retry_after_secs(wait)).into());
    }
    Ok(reset_after_effect)
}

/// An answer that never arrives. Its body fails on the first read, so hyper drops the
/// connection before writing anything, not even the status line (its head is only buffered
/// until the first body frame): the client sees the connection close mid-exchange, a
/// transport error, never an HTTP status (reqwest: "connection closed before message
/// completed").
fn connection_reset() -> Response {
    let broken = tokio_stream::once(Err::<Bytes, _>(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "injected connection reset",
    )));
    let mut response = Response::new(Body::from_stream(broken));
    // Its status (200) never leaves the simulator; the marker keeps the logs honest.
    response.extensions_mut().insert(InjectedReset);
    response
}

/// Marks a [`connection_reset`] answer.
#[derive(Debug, Clone, Copy)]
struct InjectedReset;

fn is_reset(response: &Response) -> bool {
    response.extensions().get::<InjectedReset>().is_some()
}

/// A successful answer, or, when the malformed roll says so, the same answer (status and
/// `Content-Type` kept) with its JSON garbled.
async fn malform(state: &SimState, endpoint: Endpoint, response: Response) -> Response {
    let Some(kind) = state.faults().roll_malformed(endpoint) else {
        return response;
    };
    Counters::bump(&state.counters().faults_injected);
    let (mut parts, body) = response.into_parts();
    // The simulator's own in-memory body cannot fail to read; an empty one is malformed too.
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    // The length changes; hyper sets the new one from the body.
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(garble(kind, &body)))
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
        Injected::Nothing => {
            let response = next.run(request).await;
            if response.status().is_success() {
                malform(&state, Endpoint::Token, response).await
            } else {
                response
            }
        }
        Injected::Throttle(wait) => {
            Counters::bump(&state.counters().faults_injected);
            AadError::throttled(retry_after_secs(wait)).respond(now, request.headers())
        }
        Injected::Error => {
            Counters::bump(&state.counters().faults_injected);
            AadError::unavailable().respond(now, request.headers())
        }
        Injected::Reset => {
            Counters::bump(&state.counters().faults_injected);
            connection_reset()
        }
        Injected::ResetAfterEffect => {
            // A token is issued, but the client never receives it.
            let _issued = next.run(request).await;
            Counters::bump(&state.counters().faults_injected);
            connection_reset()
        }
    };
    tracing::debug!(
        %path,
        status = response.status().as_u16(),
        reset = is_reset(&response),
        "simulated token request"
    );
    response
}
