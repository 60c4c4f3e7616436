//! Typed calls to the Defender API. Each call builds one request, sends it through the
//! stack, and decodes the answer or the documented error body.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use serde::{Deserialize, de::DeserializeOwned};
use time::OffsetDateTime;
use tower::ServiceExt;
use url::Url;

use super::{ApiError, Error, UpstreamService, model, odata};
use crate::{
    call::{Api, CallContext, Deadline, Request, retry_after},
    clock::Clock,
    domain::{ActionId, ActionStatus, MachineAction, MachineId, ScanType},
};

/// Defender's action type for antivirus scans.
pub const SCAN_ACTION_TYPE: &str = "RunAntiVirusScan";

/// Filters of a list call (all optional) and the page to fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionQuery {
    /// Any of these actions (empty: no filter on ids).
    pub ids: Vec<ActionId>,
    pub machine_id: Option<MachineId>,
    pub action_type: Option<&'static str>,
    pub status: Option<ActionStatus>,
    pub created_at_or_after: Option<OffsetDateTime>,
    pub top: Option<u32>,
    pub skip: Option<u32>,
}

impl ActionQuery {
    /// The query string, `$filter` first.
    fn to_query_string(&self) -> String {
        let mut clauses = Vec::new();
        if !self.ids.is_empty() {
            clauses.push(odata::Clause::AnyOf(
                "id",
                self.ids.iter().map(ToString::to_string).collect(),
            ));
        }
        if let Some(id) = &self.machine_id {
            clauses.push(odata::Clause::Eq("machineId", id.to_string()));
        }
        if let Some(kind) = self.action_type {
            clauses.push(odata::Clause::Eq("type", kind.to_owned()));
        }
        if let Some(status) = &self.status {
            clauses.push(odata::Clause::Eq("status", status.as_upstream().to_owned()));
        }
        if let Some(at) = self.created_at_or_after {
            clauses.push(odata::Clause::GeDateTime(
                "creationDateTimeUtc",
                model::format_timestamp(at),
            ));
        }
        let mut parts = Vec::new();
        if !clauses.is_empty() {
            parts.push(format!(
                "$filter={}",
                odata::encode(&odata::filter(&clauses))
            ));
        }
        if let Some(top) = self.top {
            parts.push(format!("$top={top}"));
        }
        if let Some(skip) = self.skip.filter(|&s| s > 0) {
            parts.push(format!("$skip={skip}"));
        }
        parts.join("&")
    }
}

/// An action of a list page that could not be decoded: it is left out of the page, and its
/// reason (never the entry itself, which may be large) is what gets logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedAction {
    /// The entry's `id` when it is a string (cut to 100 characters), to look it up by id.
    pub id: Option<String>,
    pub reason: String,
}

/// The longest reason kept for a skipped action (serde may quote the offending value).
const MAX_SKIP_REASON_CHARS: usize = 200;

/// The Defender API, typed.
#[derive(Clone)]
pub struct DefenderClient {
    /// The base URL resolved as a directory (what `base.join(path)` prefixes): requests
    /// append their path, whose parts are validated ids, and an encoded query to it, so a call
    /// parses its URL once (as the `http::Uri`), not through `Url` first.
    prefix: String,
    service: UpstreamService,
    /// Reads `Retry-After` dates.
    clock: Clock,
}

impl DefenderClient {
    /// `base` is a validated API base URL (see [`super::parse_base_url`]).
    pub fn new(base: Url, service: UpstreamService, clock: Clock) -> Self {
        Self {
            prefix: directory_of(&base),
            service,
            clock,
        }
    }

    /// `POST /api/machines/{id}/runAntiVirusScan`
    pub async fn run_antivirus_scan(
        &self,
        machine: &MachineId,
        scan_type: ScanType,
        comment: &str,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
        let body = serde_json::to_vec(&model::RunScanBody {
            comment,
            scan_type: scan_type.as_upstream(),
        })
        .map_err(|err| Error::Malformed {
            api: Api::RunScan,
            detail: err.to_string(),
        })?;
        let path = format!("api/machines/{machine}/runAntiVirusScan");
        let wire: model::WireAction = self
            .send(Api::RunScan, Method::POST, &path, None, Some(body), ctx)
            .await?;
        action(Api::RunScan, wire)
    }

    /// `GET /api/machineactions/{id}`
    pub async fn get_action(
        &self,
        id: &ActionId,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
        let path = format!("api/machineactions/{id}");
        let wire = self
            .send(Api::GetAction, Method::GET, &path, None, None, ctx)
            .await?;
        action(Api::GetAction, wire)
    }

    /// `GET /api/machineactions?$filter=...&$top=...&$skip=...`, newest first.
    pub async fn list_actions(
        &self,
        query: &ActionQuery,
        ctx: &CallContext,
    ) -> Result<Vec<MachineAction>, Error> {
        let list: model::WireActionList = self.list_page(query, ctx).await?;
        list.value
            .into_iter()
            .map(|wire| action(Api::ListActions, wire))
            .collect()
    }

    /// `GET /api/machineactions?...` like [`Self::list_actions`], but each action is decoded on
    /// its own: a malformed one is an `Err` in its place instead of failing the page, so one
    /// bad entry cannot hide the others. Only a page that is not a page is `Malformed`.
    pub async fn list_actions_each(
        &self,
        query: &ActionQuery,
        ctx: &CallContext,
    ) -> Result<Vec<Result<MachineAction, SkippedAction>>, Error> {
        let page: model::WireActionEntries = self.list_page(query, ctx).await?;
        Ok(page.value.into_iter().map(entry).collect())
    }

    /// One page of the list call, decoded as `T` (strictly, or entry by entry).
    async fn list_page<T: DeserializeOwned>(
        &self,
        query: &ActionQuery,
        ctx: &CallContext,
    ) -> Result<T, Error> {
        let query = query.to_query_string();
        self.send(
            Api::ListActions,
            Method::GET,
            "api/machineactions",
            Some(&query),
            None,
            ctx,
        )
        .await
    }

    /// `POST /api/machineactions/{id}/cancel`
    pub async fn cancel_action(
        &self,
        id: &ActionId,
        comment: &str,
        ctx: &CallContext,
    ) -> Result<MachineAction, Error> {
        let body =
            serde_json::to_vec(&model::CancelBody { comment }).map_err(|err| Error::Malformed {
                api: Api::CancelAction,
                detail: err.to_string(),
            })?;
        let path = format!("api/machineactions/{id}/cancel");
        let wire = self
            .send(
                Api::CancelAction,
                Method::POST,
                &path,
                None,
                Some(body),
                ctx,
            )
            .await?;
        action(Api::CancelAction, wire)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        api: Api,
        method: Method,
        path: &str,
        query: Option<&str>,
        body: Option<Vec<u8>>,
        ctx: &CallContext,
    ) -> Result<T, Error> {
        let mut url =
            String::with_capacity(self.prefix.len() + path.len() + 1 + query.map_or(0, str::len));
        url.push_str(&self.prefix);
        url.push_str(path);
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(query);
        }

        let has_body = body.is_some();
        let mut request = http::Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, "application/json");
        if has_body {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let mut request: Request = request
            .body(body.map(Bytes::from).unwrap_or_default())
            .map_err(|err| Error::Malformed {
                api,
                detail: format!("cannot build the request: {err}"),
            })?;
        request.extensions_mut().insert(api);
        if let Some(deadline) = ctx.deadline {
            request.extensions_mut().insert(Deadline(deadline));
        }
        if let Some(caller) = &ctx.caller {
            request.extensions_mut().insert(caller.clone());
        }
        if let Some(observer) = &ctx.observer {
            request.extensions_mut().insert(observer.clone());
        }

        let response = self.service.clone().oneshot(request).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::Api(api_error(
                api,
                status,
                response.headers(),
                response.body(),
                self.clock.utc().into(),
            )));
        }
        serde_json::from_slice(response.body()).map_err(|err| Error::Malformed {
            api,
            detail: format!("HTTP {status} with a body that is not the expected JSON: {err}"),
        })
    }
}

fn action(api: Api, wire: model::WireAction) -> Result<MachineAction, Error> {
    MachineAction::try_from(wire).map_err(|err| Error::Malformed {
        api,
        detail: err.to_string(),
    })
}

/// One entry of a list page, through the same decoding as a single action.
fn entry(raw: serde_json::Value) -> Result<MachineAction, SkippedAction> {
    let id = raw
        .get("id")
        .and_then(serde_json::Value::as_str)
        .map(|id| bounded(id.to_owned(), 100));
    let skipped = |reason: String| SkippedAction {
        id: id.clone(),
        reason: bounded(reason, MAX_SKIP_REASON_CHARS),
    };
    let wire = model::WireAction::deserialize(raw).map_err(|err| skipped(err.to_string()))?;
    MachineAction::try_from(wire).map_err(|err| skipped(err.to_string()))
}

/// What `base.join(relative)` puts before `relative`: the base up to its last `/`.
fn directory_of(base: &Url) -> String {
    match base.join("x") {
        Ok(resolved) => resolved
            .as_str()
            .strip_suffix('x')
            .unwrap_or(resolved.as_str())
            .to_owned(),
        // A validated base always resolves; keep it as it is otherwise.
        Err(_) => format!("{}/", base.as_str().trim_end_matches('/')),
    }
}

#[cfg(test)]
#[test]
fn request_urls_resolve_like_url_join() {
    for (base, expected) in [
        (
            "https://api.security.microsoft.com",
            "https://api.security.microsoft.com/",
        ),
        (
            "https://eu.api.security.microsoft.com/",
            "https://eu.api.security.microsoft.com/",
        ),
        (
            "http://127.0.0.1:8443/proxy/",
            "http://127.0.0.1:8443/proxy/",
        ),
        ("http://127.0.0.1:8443/proxy", "http://127.0.0.1:8443/"),
    ] {
        let base = Url::parse(base).unwrap();
        assert_eq!(directory_of(&base), expected);
        let path = "api/machineactions/7b1d6a3e-8b55-4c2d-9a3f-1b2c3d4e5f60";
        assert_eq!(
            format!("{}{path}", directory_of(&base)),
            base.join(path).unwrap().as_str()
        );
    }
}

/// The longest upstream error message kept (Defender's are a sentence or two).
const MAX_MESSAGE_CHARS: usize = 1000;

/// `text` cut to at most `max` characters, marked when cut.
fn bounded(mut text: String, max: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
        text.push('…');
    }
    text
}

/// Decodes Defender's error envelope; a body that is not one still yields a useful error.
fn api_error(
    api: Api,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> ApiError {
    let parsed: Option<model::WireErrorBody> = serde_json::from_slice(body).ok();
    let (code, message, target) = match parsed {
        // Bounded: these reach callers' statuses and the logs, and a body may be megabytes.
        Some(model::WireErrorBody { error }) => (
            bounded(error.code.unwrap_or_default(), 100),
            bounded(error.message.unwrap_or_default(), MAX_MESSAGE_CHARS),
            error.target.map(|t| bounded(t, 200)),
        ),
        None => (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            None,
        ),
    };
    ApiError {
        api,
        status: status.as_u16(),
        code,
        message,
        target,
        retry_after: retry_after(headers, now),
    }
}

#[cfg(test)]
#[test]
fn long_upstream_error_texts_are_cut_on_a_character_boundary() {
    let body = serde_json::json!({
        "error": { "code": "X".repeat(500), "message": "é".repeat(5000), "target": "t" }
    })
    .to_string();
    let error = api_error(
        Api::GetAction,
        StatusCode::BAD_REQUEST,
        &HeaderMap::new(),
        body.as_bytes(),
        SystemTime::UNIX_EPOCH,
    );
    assert_eq!(error.message.chars().count(), MAX_MESSAGE_CHARS + 1);
    assert!(error.message.ends_with('…'));
    assert_eq!(error.code.chars().count(), 101);
    assert_eq!(error.target.as_deref(), Some("t"));
}

#[cfg(test)]
fn headers_with_retry_after(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(value) {
        headers.insert(header::RETRY_AFTER, value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn list_query_string_matches_the_documented_examples() {
        let query = ActionQuery {
            machine_id: Some(
                MachineId::parse("m", "1e5bc9d7e413ddd7902c2932e418702b84d0cc07").unwrap(),
            ),
            action_type: Some(SCAN_ACTION_TYPE),
            top: Some(2),
            ..ActionQuery::default()
        };
        assert_eq!(
            query.to_query_string(),
            "$filter=machineId%20eq%20%271e5bc9d7e413ddd7902c2932e418702b84d0cc07%27%20and%20type%20eq%20%27RunAntiVirusScan%27&$top=2"
        );
        assert_eq!(ActionQuery::default().to_query_string(), "");
    }

    #[test]
    fn decodes_the_documented_error_body_and_retry_after() {
        let body = br#"{ "error": { "code": "TooManyRequests", "message": "Request quota exceeded. Retry after 37 seconds.", "target": "9b1d" } }"#;
        let err = api_error(
            Api::GetAction,
            StatusCode::TOO_MANY_REQUESTS,
            &headers_with_retry_after("37"),
            body,
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(err.code, "TooManyRequests");
        assert_eq!(err.retry_after, Some(Duration::from_secs(37)));
        assert_eq!(err.target.as_deref(), Some("9b1d"));
    }

    #[test]
    fn a_malformed_list_entry_is_skipped_with_its_id_and_reason_alone() {
        let good = serde_json::json!({ "id": "a", "status": "Pending" });
        let huge = "x".repeat(10_000);
        assert_eq!(entry(good).map(|a| a.id), Ok("a".to_owned()));
        let retyped = entry(serde_json::json!({ "id": "b", "status": 42, "title": huge }));
        let skipped = retyped.expect_err("a numeric status is malformed");
        assert_eq!(skipped.id.as_deref(), Some("b"));
        assert!(
            skipped.reason.contains("invalid type"),
            "{}",
            skipped.reason
        );
        let missing = entry(serde_json::json!({ "id": huge })).expect_err("no status");
        assert!(missing.reason.contains("status"), "{}", missing.reason);
        assert!(missing.id.is_some_and(|id| id.chars().count() <= 101));
        let not_an_object = entry(serde_json::json!(7)).expect_err("not an action");
        assert_eq!(not_an_object.id, None);
    }

    #[test]
    fn a_non_json_error_body_is_kept_as_the_message() {
        let err = api_error(
            Api::RunScan,
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            b"<html>bad gateway</html>",
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(err.status, 502);
        assert!(err.message.contains("bad gateway"));
    }

    #[test]
    fn already_in_progress_is_recognised_by_code_or_message() {
        let mut err = api_error(
            Api::RunScan,
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            br#"{"error":{"code":"ActiveRequestAlreadyExists","message":"Action is already in progress"}}"#,
            SystemTime::UNIX_EPOCH,
        );
        assert!(err.is_already_in_progress());
        err.code = "BadRequest".into();
        assert!(err.is_already_in_progress());
        err.message = "Invalid request body.".into();
        assert!(!err.is_already_in_progress());
    }
}
