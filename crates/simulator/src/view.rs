//! The MachineAction JSON, with every key in the order of a real response.
//!
//! Some clients compare bodies or parse positionally; the observed order and the .NET
//! timestamp format are part of what the simulator promises.

use serde::Serialize;
use time::OffsetDateTime;

use super::actions::{Action, ActionStatus};
use super::timestamp;

/// `E_FAIL`, reported as `errorHResult` of failed scans (the real value is undocumented).
const E_FAIL: i64 = -2_147_467_259;

/// Defender's public host, as it appears in every `@odata.context` of the documentation.
pub(crate) const ENTITY_CONTEXT: &str =
    "https://api.security.microsoft.com/api/$metadata#MachineActions/$entity";
pub(crate) const COLLECTION_CONTEXT: &str =
    "https://api.security.microsoft.com/api/$metadata#MachineActions";

/// Field order is the observed order of a real response; serde keeps struct order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ActionView<'a> {
    #[serde(rename = "@odata.context", skip_serializing_if = "Option::is_none")]
    odata_context: Option<&'static str>,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    title: Option<&'a str>,
    requestor: &'a str,
    requestor_comment: Option<&'a str>,
    status: ActionStatus,
    machine_id: &'a str,
    computer_dns_name: &'a str,
    creation_date_time_utc: String,
    last_update_date_time_utc: String,
    cancellation_requestor: Option<&'a str>,
    cancellation_comment: Option<&'a str>,
    cancellation_date_time_utc: Option<String>,
    error_h_result: i64,
    scope: Option<&'a str>,
    external_id: Option<&'a str>,
    request_source: &'a str,
    related_file_info: Option<()>,
    commands: &'a [String],
    troubleshoot_info: Option<()>,
}

impl Action {
    /// The MachineAction JSON; `with_context` adds the `@odata.context` of a single entity.
    pub(crate) fn view(&self, now: OffsetDateTime, with_context: bool) -> ActionView<'_> {
        let (status, last_update) = self.state_at(now);
        let cancellation = self.cancellation.as_ref();
        ActionView {
            odata_context: with_context.then_some(ENTITY_CONTEXT),
            id: &self.id,
            kind: self.kind,
            title: None,
            requestor: &self.requestor,
            requestor_comment: self.comment.as_deref(),
            status,
            machine_id: &self.machine_id,
            computer_dns_name: &self.computer_dns_name,
            creation_date_time_utc: timestamp::defender(self.created),
            last_update_date_time_utc: timestamp::defender(last_update),
            cancellation_requestor: cancellation.map(|c| c.requestor.as_str()),
            cancellation_comment: cancellation.and_then(|c| c.comment.as_deref()),
            cancellation_date_time_utc: cancellation.map(|c| timestamp::defender(c.at)),
            error_h_result: if status == ActionStatus::Failed {
                E_FAIL
            } else {
                0
            },
            scope: self.scope,
            external_id: None,
            request_source: "PublicApi",
            related_file_info: None,
            commands: &[],
            troubleshoot_info: None,
        }
    }
}
