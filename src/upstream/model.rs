//! The Defender API's JSON, decoded leniently: unknown keys are ignored, any key may be absent or
//! null (real payloads drop keys depending on type and status), timestamps carry 0 to 7
//! fractional digits, and the docs' misspelled `lastUpdateTimeUtc` is accepted too.

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, PrimitiveDateTime, format_description::well_known::Rfc3339};

use crate::domain::{ActionStatus, MachineAction};

/// The body of `POST /api/machines/{id}/runAntiVirusScan`. Field names are case-sensitive upstream.
#[derive(Debug, Serialize)]
pub struct RunScanBody<'a> {
    #[serde(rename = "Comment")]
    pub comment: &'a str,
    #[serde(rename = "ScanType")]
    pub scan_type: &'a str,
}

/// The body of `POST /api/machineactions/{id}/cancel`.
#[derive(Debug, Serialize)]
pub struct CancelBody<'a> {
    #[serde(rename = "Comment")]
    pub comment: &'a str,
}

/// A MachineAction entity as it arrives on the wire.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WireAction {
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub action_type: Option<String>,
    pub scope: Option<String>,
    pub status: Option<String>,
    pub machine_id: Option<String>,
    pub computer_dns_name: Option<String>,
    pub requestor: Option<String>,
    pub requestor_comment: Option<String>,
    pub creation_date_time_utc: Option<String>,
    #[serde(alias = "lastUpdateTimeUtc")]
    pub last_update_date_time_utc: Option<String>,
    pub cancellation_requestor: Option<String>,
    pub cancellation_comment: Option<String>,
    pub cancellation_date_time_utc: Option<String>,
    pub title: Option<String>,
    pub external_id: Option<String>,
}

/// A page of `GET /api/machineactions`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WireActionList {
    pub value: Vec<WireAction>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
}

/// A page of `GET /api/machineactions` whose actions are decoded one by one: a malformed action
/// spoils only itself, not the page (see `DefenderClient::list_actions_each`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WireActionEntries {
    pub value: Vec<serde_json::Value>,
    #[serde(rename = "@odata.nextLink")]
    pub next_link: Option<String>,
}

/// Defender's documented error envelope: `{"error": {"code", "message", "target"}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WireErrorBody {
    pub error: WireError,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WireError {
    pub code: Option<String>,
    pub message: Option<String>,
    pub target: Option<String>,
}

/// Why a wire action could not become a domain action.
#[derive(Debug, thiserror::Error)]
#[error("machine action is missing its `{0}`")]
pub struct MissingField(pub &'static str);

impl TryFrom<WireAction> for MachineAction {
    type Error = MissingField;

    fn try_from(wire: WireAction) -> Result<Self, Self::Error> {
        Ok(MachineAction {
            id: wire
                .id
                .filter(|id| !id.is_empty())
                .ok_or(MissingField("id"))?,
            action_type: wire.action_type.unwrap_or_default(),
            scope: wire.scope,
            status: wire
                .status
                .as_deref()
                .map(ActionStatus::from_upstream)
                .ok_or(MissingField("status"))?,
            machine_id: wire.machine_id.unwrap_or_default(),
            computer_dns_name: wire.computer_dns_name,
            requestor: wire.requestor,
            requestor_comment: wire.requestor_comment,
            creation_time: parse_timestamp(wire.creation_date_time_utc.as_deref()),
            last_update_time: parse_timestamp(wire.last_update_date_time_utc.as_deref()),
            cancellation_requestor: wire.cancellation_requestor,
            cancellation_comment: wire.cancellation_comment,
            cancellation_time: parse_timestamp(wire.cancellation_date_time_utc.as_deref()),
            title: wire.title,
            external_id: wire.external_id,
        })
    }
}

/// Parses Defender's timestamps: RFC 3339 with any number of fractional digits; a timestamp
/// without an offset is UTC (the field names say so). Unparseable values become `None` rather
/// than failing the whole action: a status update matters more than a malformed date.
pub fn parse_timestamp(raw: Option<&str>) -> Option<OffsetDateTime> {
    let raw = raw?.trim();
    let at = match OffsetDateTime::parse(raw, &Rfc3339) {
        Ok(at) => at,
        Err(_) => {
            let naive = time::macros::format_description!(
                version = 2,
                "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
            );
            PrimitiveDateTime::parse(raw, naive).ok()?.assume_utc()
        }
    };
    // Kept in UTC and within the years RFC 3339 can write: near either end an offset moves a
    // time out of them ("9999-12-31T23:59:59-23:59" is year 10000 in UTC), where converting
    // it to UTC later (for a `$filter`) would panic.
    at.checked_to_offset(time::UtcOffset::UTC)
        .filter(|utc| (0..=9999).contains(&utc.year()))
}

/// Formats a timestamp for an OData `$filter` literal (UTC, RFC 3339).
pub fn format_timestamp(at: OffsetDateTime) -> String {
    at.checked_to_offset(time::UtcOffset::UTC)
        .and_then(|utc| utc.format(&Rfc3339).ok())
        .unwrap_or_else(|| at.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_documented_post_response() {
        let body = r#"{
          "@odata.context": "https://api.security.microsoft.com/api/$metadata#MachineActions/$entity",
          "id": "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37", "type": "RunAntiVirusScan", "title": null,
          "requestor": "scan-gateway-prod", "requestorComment": "INC-4711", "status": "Pending",
          "machineId": "1e5bc9d7e413ddd7902c2932e418702b84d0cc07", "computerDnsName": "ws-finance-017.contoso.local",
          "creationDateTimeUtc": "2026-11-26T09:14:05.3318207Z", "lastUpdateDateTimeUtc": "2026-11-26T09:14:05.331821Z",
          "cancellationRequestor": null, "cancellationComment": null, "cancellationDateTimeUtc": null,
          "errorHResult": 0, "scope": "Quick", "externalId": null, "requestSource": "PublicApi",
          "relatedFileInfo": null, "commands": [], "troubleshootInfo": null, "someFutureField": {"x": 1}
        }"#;
        let wire: WireAction = serde_json::from_str(body).unwrap();
        let action = MachineAction::try_from(wire).unwrap();
        assert_eq!(action.status, ActionStatus::Pending);
        assert_eq!(action.scope.as_deref(), Some("Quick"));
        let created = action.creation_time.unwrap();
        assert_eq!(created.nanosecond(), 331_820_700);
        assert!(action.cancellation_time.is_none());
    }

    #[test]
    fn tolerates_missing_keys_nulls_and_the_misspelled_update_field() {
        let body = r#"{"id":"a","status":"Cancelled","scope":null,"lastUpdateTimeUtc":"2024-01-02T13:39:46Z"}"#;
        let action =
            MachineAction::try_from(serde_json::from_str::<WireAction>(body).unwrap()).unwrap();
        assert_eq!(action.status, ActionStatus::Cancelled);
        assert!(action.scope.is_none());
        assert!(action.last_update_time.is_some());
    }

    #[test]
    fn an_action_without_id_or_status_is_rejected() {
        let wire: WireAction = serde_json::from_str(r#"{"status":"Pending"}"#).unwrap();
        assert!(MachineAction::try_from(wire).is_err());
        let wire: WireAction = serde_json::from_str(r#"{"id":"x"}"#).unwrap();
        assert!(MachineAction::try_from(wire).is_err());
    }

    #[test]
    fn timestamps_accept_zero_to_seven_fraction_digits_and_no_offset() {
        for raw in [
            "2024-01-02T13:39:46Z",
            "2024-01-02T13:39:46.7Z",
            "2024-01-02T13:39:46.7738206Z",
            "2024-01-02T13:39:46.7738206",
            "2024-01-02T13:39:46+00:00",
        ] {
            assert!(parse_timestamp(Some(raw)).is_some(), "{raw}");
        }
        assert!(parse_timestamp(Some("yesterday")).is_none());
    }

    #[test]
    fn decodes_the_non_standard_odata_error_body() {
        let body = r#"{ "error": { "code": "", "message": "The query specified in the URI is not valid.", "details": [] } }"#;
        let err: WireErrorBody = serde_json::from_str(body).unwrap();
        assert_eq!(err.error.code.as_deref(), Some(""));
        assert!(err.error.message.unwrap().starts_with("The query"));
    }
}
