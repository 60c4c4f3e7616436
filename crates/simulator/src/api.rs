//! The Defender routes: run a scan, read one action, list actions, cancel an action.
//!
//! Authentication, faults and quota have already run (see `gate.rs`); handlers parse their
//! input first, answering the documented 400/404 codes, then work on the action store.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::actions::{Action, ActionStore, CancelError, ScanType};
use super::config::DuplicateMode;
use super::error::{ApiError, json_response};
use super::odata::{Field, Record};
use super::query::ListQuery;
use super::state::SimState;
use super::stats::Counters;
use super::view::{ActionView, COLLECTION_CONTEXT};

/// `POST /api/machines/{id}/runAntiVirusScan` with `{"Comment": .., "ScanType": "Quick"|"Full"}`.
pub(crate) async fn run_scan(
    State(state): State<SimState>,
    raw_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let machine_id = machine_id(&path_id(raw_id)?)?;
    let (comment, scan) = scan_body(&headers, &body)?;
    let machine = state
        .inventory()
        .get(&machine_id)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("Machine {machine_id} was not found")))?;
    if !machine.supports_scan {
        return Err(ApiError::OsPlatformNotSupported(
            machine.os_platform.clone(),
        ));
    }
    let now = state.clock().utc();
    let config = state.config();
    let mut actions = state.actions();
    if let Some(existing) = actions.active_scan(&machine.id, now) {
        let existing = existing.id.clone();
        let refuse = match config.duplicate_mode {
            DuplicateMode::Error => true,
            DuplicateMode::ReturnExisting => false,
            DuplicateMode::Alternate => actions.alternate_duplicate_is_error(),
        };
        if refuse {
            return Err(ApiError::ActiveRequestAlreadyExists);
        }
        return Ok(entity(&actions, &existing, now, StatusCode::CREATED));
    }
    let id = actions.create_scan(machine, scan, comment, now, config);
    Counters::bump(&state.counters().actions_created);
    Ok(entity(&actions, &id, now, StatusCode::CREATED))
}

/// `GET /api/machineactions/{id}`.
pub(crate) async fn get_action(
    State(state): State<SimState>,
    raw_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = action_id(&path_id(raw_id)?)?;
    let actions = state.actions();
    if actions.get(&id).is_none() {
        return Err(action_not_found(&id));
    }
    Ok(entity(&actions, &id, state.clock().utc(), StatusCode::OK))
}

/// `GET /api/machineactions` with `$filter`, `$top` and `$skip`, newest first.
pub(crate) async fn list(
    State(state): State<SimState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(raw.as_deref())?;
    let now = state.clock().utc();
    let faults = state.faults().settings().malformed_list_entries.clone();
    let actions = state.actions();
    let value = actions
        .newest_first()
        .filter(|action| {
            query
                .filter
                .as_ref()
                .is_none_or(|f| f.matches(&At { action, now }))
        })
        .skip(query.skip)
        .take(query.top)
        .map(|action| action.view(now, false))
        .collect();
    let body = Collection {
        odata_context: COLLECTION_CONTEXT,
        value,
    };
    if faults.is_empty() {
        return Ok(json_response(StatusCode::OK, serde_json::to_vec(&body)));
    }
    Ok(json_response(
        StatusCode::OK,
        serde_json::to_value(&body).and_then(|mut page| {
            malform_entries(&mut page, &faults);
            serde_json::to_vec(&page)
        }),
    ))
}

/// `POST /api/machineactions/{id}/cancel` with an optional `{"Comment": ..}`.
pub(crate) async fn cancel(
    State(state): State<SimState>,
    raw_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = action_id(&path_id(raw_id)?)?;
    let comment = cancel_comment(&headers, &body)?;
    let now = state.clock().utc();
    let mut actions = state.actions();
    match actions.cancel(&id, now, &state.config().app_name, comment) {
        Ok(action) => Ok(json_response(
            StatusCode::OK,
            serde_json::to_vec(&action.view(now, true)),
        )),
        Err(CancelError::NotFound) => Err(action_not_found(&id)),
        Err(CancelError::AlreadyFinal) => Err(ApiError::BadRequest(format!(
            "Action {id} is already in a final state"
        ))),
    }
}

#[derive(Serialize)]
struct Collection<'a> {
    #[serde(rename = "@odata.context")]
    odata_context: &'a str,
    value: Vec<ActionView<'a>>,
}

/// Retypes the `status` of the listed actions whose id is in `bad` (a number: valid JSON, an
/// entity no typed decoder accepts).
fn malform_entries(page: &mut Value, bad: &[String]) {
    let Some(Value::Array(entries)) = page.get_mut("value") else {
        return;
    };
    for entry in entries {
        let listed = entry
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| bad.iter().any(|b| b == id));
        if listed && let Some(status) = entry.get_mut("status") {
            *status = Value::from(42);
        }
    }
}

/// An action as seen at one instant, for `$filter`.
struct At<'a> {
    action: &'a Action,
    now: OffsetDateTime,
}

impl Record for At<'_> {
    fn text(&self, field: Field) -> Option<&str> {
        let a = self.action;
        match field {
            Field::Id => Some(&a.id),
            Field::Status => Some(a.state_at(self.now).0.as_str()),
            Field::MachineId => Some(&a.machine_id),
            Field::Type => Some(a.kind),
            Field::Requestor => Some(&a.requestor),
            Field::CreationDateTimeUtc => None,
        }
    }

    fn time(&self, field: Field) -> Option<OffsetDateTime> {
        (field == Field::CreationDateTimeUtc).then_some(self.action.created)
    }
}

fn entity(actions: &ActionStore, id: &str, now: OffsetDateTime, status: StatusCode) -> Response {
    match actions.get(id) {
        Some(action) => json_response(status, serde_json::to_vec(&action.view(now, true))),
        None => json_response(StatusCode::INTERNAL_SERVER_ERROR, Ok(Vec::new())),
    }
}

fn action_not_found(id: &str) -> ApiError {
    ApiError::ResourceNotFound(format!("Action {id} was not found"))
}

/// A path segment that isn't valid percent-encoded UTF-8 is bad input like any other.
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::InvalidInput("in the request path".to_owned()))
}

/// Machine ids are 40 hex digits; any case is accepted and normalised to lowercase.
fn machine_id(raw: &str) -> Result<String, ApiError> {
    if raw.len() == 40 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ApiError::InvalidInput(raw.to_owned()))
    }
}

/// A malformed action id is a 400 `InvalidInput` (not a 404): the id can't exist, and telling
/// the caller that its input is wrong is more useful.
fn action_id(raw: &str) -> Result<String, ApiError> {
    uuid::Uuid::try_parse(raw)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::InvalidInput(raw.to_owned()))
}

/// Bodies must be declared JSON; the check reports the documented `InvalidRequestBody`.
fn json_object(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        tracing::debug!("simulated request body refused: Content-Type is not application/json");
        return Err(ApiError::InvalidRequestBody);
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::InvalidRequestBody),
    }
}

/// Property names are case-sensitive (documented) and so are the `ScanType` values here.
fn scan_body(headers: &HeaderMap, body: &[u8]) -> Result<(String, ScanType), ApiError> {
    let object = json_object(headers, body)?;
    let comment = match object.get("Comment") {
        None | Some(Value::Null) => return Err(ApiError::MissingRequiredParameter("Comment")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::InvalidRequestBody),
    };
    let scan = match object.get("ScanType") {
        None | Some(Value::Null) => return Err(ApiError::MissingRequiredParameter("ScanType")),
        Some(Value::String(s)) if s == "Quick" => ScanType::Quick,
        Some(Value::String(s)) if s == "Full" => ScanType::Full,
        Some(_) => return Err(ApiError::InvalidRequestBody),
    };
    Ok((comment, scan))
}

/// The cancel body is optional; an empty body means no comment.
fn cancel_comment(headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match json_object(headers, body)?.get("Comment") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::InvalidRequestBody),
    }
}
