//! Audit records: one structured event with target `audit` per state-changing call
//! (`StartScan`, `RunScan`, `CancelScan`), refused ones included: who asked (peer address, and
//! the caller's identity when calls are authenticated; calls the auth layer refuses get a
//! `call refused` record from it), for which machine, what scan, with
//! which comment, the action that resulted and the outcome (gRPC code).
//!
//! ```text
//! {"trace_id":"4bf9..","span_id":"9c3a..","timestamp":"..","level":"INFO","fields":{"message":"scan requested","rpc":"RunScan","peer":"10.0.3.7:51234","caller":"unauthenticated","machine_id":"1e5b..","scan_type":"SCAN_TYPE_QUICK","comment":"weekly check","action_id":"7f3c..","outcome":"OK"},"target":"audit",..}
//! ```
//!
//! The request's fields are recorded as received (a refused request may carry anything), cut
//! to [`MAX_FIELD_CHARS`].

use std::net::SocketAddr;

use tonic::Code;

use super::pb;
use crate::{metrics::code_name, telemetry::AUDIT_TARGET};

/// Longest request text copied into a record.
pub const MAX_FIELD_CHARS: usize = 1024;

/// What a state-changing call asked for; [`AuditRecord::finish`] writes it with the outcome.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    rpc: &'static str,
    peer: Option<SocketAddr>,
    /// The authenticated caller (`security::Caller`); `None` without authentication.
    caller: Option<String>,
    machine_id: Option<String>,
    scan_type: Option<&'static str>,
    comment: String,
    request_id: Option<String>,
    /// For a cancel, the action it names.
    action_id: Option<String>,
}

impl AuditRecord {
    /// A `StartScan` or `RunScan` call.
    pub fn scan<T>(
        rpc: &'static str,
        request: &tonic::Request<T>,
        machine_id: &str,
        scan_type: i32,
        comment: &str,
        request_id: &str,
    ) -> Self {
        Self {
            rpc,
            peer: request.remote_addr(),
            caller: caller_of(request),
            machine_id: Some(cut(machine_id)),
            scan_type: Some(
                pb::ScanType::try_from(scan_type).map_or("SCAN_TYPE_INVALID", |t| t.as_str_name()),
            ),
            comment: cut(comment),
            request_id: (!request_id.is_empty()).then(|| cut(request_id)),
            action_id: None,
        }
    }

    /// A `CancelScan` call.
    pub fn cancel(request: &tonic::Request<pb::CancelScanRequest>) -> Self {
        let r = request.get_ref();
        Self {
            rpc: "CancelScan",
            peer: request.remote_addr(),
            caller: caller_of(request),
            machine_id: None,
            scan_type: None,
            comment: cut(&r.comment),
            request_id: None,
            action_id: Some(cut(&r.action_id)),
        }
    }

    /// Writes the record: the call ended with `code`, about `action` (id and machine) when
    /// there is one.
    pub fn finish(self, code: Code, action: Option<(&str, &str)>) {
        let action_id = action.map(|(id, _)| id).or(self.action_id.as_deref());
        let machine_id = self
            .machine_id
            .as_deref()
            .or(action.map(|(_, machine)| machine));
        tracing::info!(
            target: AUDIT_TARGET,
            rpc = self.rpc,
            peer = self.peer.map(tracing::field::display),
            caller = self.caller.as_deref().unwrap_or("unauthenticated"),
            machine_id,
            scan_type = self.scan_type,
            comment = self.comment.as_str(),
            request_id = self.request_id.as_deref(),
            action_id,
            outcome = code_name(code),
            "{}",
            match self.rpc {
                "CancelScan" => "cancel requested",
                _ => "scan requested",
            }
        );
    }

    /// Writes the record of a unary call from its result; `action` finds the action in the
    /// answer.
    pub fn finish_unary<T>(
        self,
        result: &Result<tonic::Response<T>, tonic::Status>,
        action: fn(&T) -> Option<&pb::MachineAction>,
    ) {
        match result {
            Ok(response) => self.finish(
                Code::Ok,
                action(response.get_ref()).map(|a| (a.id.as_str(), a.machine_id.as_str())),
            ),
            Err(status) => self.finish(status.code(), None),
        }
    }
}

fn caller_of<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .extensions()
        .get::<crate::security::Caller>()
        .map(|caller| cut(&caller.0))
}

fn cut(raw: &str) -> String {
    match raw.char_indices().nth(MAX_FIELD_CHARS) {
        Some((end, _)) => format!("{}…", &raw[..end]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut_on_a_character_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(MAX_FIELD_CHARS + 10);
        let kept = cut(&long);
        assert_eq!(kept.chars().count(), MAX_FIELD_CHARS + 1);
        assert!(kept.ends_with('…'));
    }

    #[test]
    fn the_authenticated_caller_is_recorded() {
        let mut request = tonic::Request::new(pb::CancelScanRequest::default());
        assert_eq!(AuditRecord::cancel(&request).caller, None);
        request.extensions_mut().insert(crate::security::Caller(
            "spiffe://test/ns/soc/sa/scanner".into(),
        ));
        assert_eq!(
            AuditRecord::cancel(&request).caller.as_deref(),
            Some("spiffe://test/ns/soc/sa/scanner")
        );
    }
}
