//! The simulator's own read-only endpoints (`/simulator/stats`, `/simulator/machines`) and the
//! Defender-shaped 404 for every unknown path.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::inventory::Machine;
use super::state::SimState;
use super::stats::{Endpoint, Stats};

/// `GET /simulator/stats`; not counted itself, so polling it doesn't change it.
pub(crate) async fn stats(State(state): State<SimState>) -> Json<Stats> {
    Json(state.counters().snapshot())
}

/// `GET /simulator/machines`: the inventory, so users can pick machine ids.
pub(crate) async fn machines(State(state): State<SimState>) -> Json<Vec<Machine>> {
    Json(state.inventory().all().to_vec())
}

/// Unknown paths: counted as `other`, answered like the real API's 404.
pub(crate) async fn fallback(State(state): State<SimState>, request: Request) -> Response {
    state.counters().request(Endpoint::Other);
    tracing::debug!(method = %request.method(), path = request.uri().path(), "simulated request to an unknown path");
    ApiError::NotFound.into_response()
}
