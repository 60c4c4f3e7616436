//! Translation between protobuf messages and domain types. Parsing collects every invalid
//! field, so a caller fixes its request in one round trip.

use time::OffsetDateTime;

use super::pb;
use crate::{
    call::Priority,
    domain::{
        ActionId, ActionStatus, CancelRequest, Comment, FieldViolation, ListQuery, MachineAction,
        MachineId, RequestId, ScanRequest, ScanType,
    },
    error::Error,
    scans::ScanEvent,
};

/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size when the caller sets none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// Collects field results; `finish` fails with every violation at once.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn check<T>(&mut self, result: Result<T, FieldViolation>) -> Option<T> {
        result.map_err(|v| self.0.push(v)).ok()
    }

    fn finish<T>(self, value: impl FnOnce() -> Option<T>) -> Result<T, Error> {
        match value() {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(Error::InvalidArgument(self.0)),
        }
    }
}

fn scan_type(raw: i32) -> Result<ScanType, FieldViolation> {
    match pb::ScanType::try_from(raw) {
        Ok(pb::ScanType::Quick) => Ok(ScanType::Quick),
        Ok(pb::ScanType::Full) => Ok(ScanType::Full),
        _ => Err(FieldViolation::new(
            "scan_type",
            "is required: SCAN_TYPE_QUICK or SCAN_TYPE_FULL",
        )),
    }
}

/// The quota class a scan request asks for (unspecified: normal).
pub fn priority(raw: i32) -> Result<Priority, Error> {
    match pb::Priority::try_from(raw) {
        Ok(pb::Priority::Unspecified | pb::Priority::Normal) => Ok(Priority::Normal),
        Ok(pb::Priority::Urgent) => Ok(Priority::Urgent),
        Ok(pb::Priority::Background) => Ok(Priority::Background),
        Err(_) => Err(FieldViolation::new(
            "priority",
            "must be PRIORITY_URGENT, PRIORITY_NORMAL or PRIORITY_BACKGROUND",
        )
        .into()),
    }
}

/// Parses the fields shared by `RunScan` and `StartScan`.
pub fn scan_request(
    machine_id: &str,
    raw_scan_type: i32,
    comment: &str,
    request_id: &str,
) -> Result<ScanRequest, Error> {
    let mut v = Violations::default();
    let machine_id = v.check(MachineId::parse("machine_id", machine_id));
    let scan_type = v.check(scan_type(raw_scan_type));
    let comment = v.check(Comment::parse("comment", comment));
    let request_id = v.check(RequestId::parse_optional("request_id", request_id));
    v.finish(|| {
        Some(ScanRequest {
            machine_id: machine_id?,
            scan_type: scan_type?,
            comment: comment?,
            request_id: request_id?,
        })
    })
}

impl TryFrom<&pb::RunScanRequest> for ScanRequest {
    type Error = Error;

    fn try_from(r: &pb::RunScanRequest) -> Result<Self, Error> {
        scan_request(&r.machine_id, r.scan_type, &r.comment, &r.request_id)
    }
}

impl TryFrom<&pb::StartScanRequest> for ScanRequest {
    type Error = Error;

    fn try_from(r: &pb::StartScanRequest) -> Result<Self, Error> {
        scan_request(&r.machine_id, r.scan_type, &r.comment, &r.request_id)
    }
}

impl TryFrom<&pb::CancelScanRequest> for CancelRequest {
    type Error = Error;

    fn try_from(request: &pb::CancelScanRequest) -> Result<Self, Error> {
        cancel_request(request)
    }
}

impl TryFrom<&pb::ListScansRequest> for ListQuery {
    type Error = Error;

    fn try_from(request: &pb::ListScansRequest) -> Result<Self, Error> {
        list_query(request)
    }
}

pub fn action_id(raw: &str) -> Result<ActionId, Error> {
    ActionId::parse("action_id", raw).map_err(Error::from)
}

pub fn cancel_request(request: &pb::CancelScanRequest) -> Result<CancelRequest, Error> {
    let mut v = Violations::default();
    let action_id = v.check(ActionId::parse("action_id", &request.action_id));
    let comment = v.check(Comment::parse("comment", &request.comment));
    v.finish(|| {
        Some(CancelRequest {
            action_id: action_id?,
            comment: comment?,
        })
    })
}

pub fn list_query(request: &pb::ListScansRequest) -> Result<ListQuery, Error> {
    let mut v = Violations::default();
    let machine_id = if request.machine_id.is_empty() {
        Some(None)
    } else {
        v.check(MachineId::parse("machine_id", &request.machine_id).map(Some))
    };
    let status = v.check(match pb::ActionStatus::try_from(request.status) {
        Ok(pb::ActionStatus::Unspecified) => Ok(None),
        Ok(status) => Ok(Some(status_from_proto(status))),
        Err(_) => Err(FieldViolation::new("status", "is not a known ActionStatus")),
    });
    let created_after = match &request.created_after {
        None => Some(None),
        Some(ts) => v.check(
            timestamp_from_proto(ts)
                .map(Some)
                .ok_or_else(|| FieldViolation::new("created_after", "is not a valid timestamp")),
        ),
    };
    let top = v.check(match request.page_size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        n => Err(FieldViolation::new(
            "page_size",
            format!("is {n}; at most {MAX_PAGE_SIZE} are allowed"),
        )),
    });
    let skip = v.check(page_token(&request.page_token));
    v.finish(|| {
        Some(ListQuery {
            machine_id: machine_id?,
            status: status?,
            created_after: created_after?,
            top: top?,
            skip: skip?,
        })
    })
}

/// Page tokens are opaque to callers; inside they are an offset.
pub fn next_page_token(skip: u32) -> String {
    format!("o{skip}")
}

fn page_token(raw: &str) -> Result<u32, FieldViolation> {
    if raw.is_empty() {
        return Ok(0);
    }
    raw.strip_prefix('o')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            FieldViolation::new(
                "page_token",
                "is not a next_page_token returned by ListScans",
            )
        })
}

fn status_from_proto(status: pb::ActionStatus) -> ActionStatus {
    match status {
        pb::ActionStatus::Pending => ActionStatus::Pending,
        pb::ActionStatus::InProgress => ActionStatus::InProgress,
        pb::ActionStatus::Succeeded => ActionStatus::Succeeded,
        pb::ActionStatus::Failed => ActionStatus::Failed,
        pb::ActionStatus::TimedOut => ActionStatus::TimeOut,
        pb::ActionStatus::Cancelled => ActionStatus::Cancelled,
        pb::ActionStatus::Unspecified => ActionStatus::Other(String::new()),
    }
}

pub fn status_to_proto(status: &ActionStatus) -> pb::ActionStatus {
    match status {
        ActionStatus::Pending => pb::ActionStatus::Pending,
        ActionStatus::InProgress => pb::ActionStatus::InProgress,
        ActionStatus::Succeeded => pb::ActionStatus::Succeeded,
        ActionStatus::Failed => pb::ActionStatus::Failed,
        ActionStatus::TimeOut => pb::ActionStatus::TimedOut,
        ActionStatus::Cancelled => pb::ActionStatus::Cancelled,
        ActionStatus::Other(_) => pb::ActionStatus::Unspecified,
    }
}

pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        // Always in 0..1e9, so it fits.
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

/// google.protobuf.Timestamp's documented range: 0001-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999999999Z. Outside it a time has no RFC 3339 form, so it could not be
/// written into the OData filter (a negative year would reach Defender as a bare number).
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;

fn timestamp_from_proto(ts: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    if !(0..1_000_000_000).contains(&ts.nanos) || !TIMESTAMP_SECONDS.contains(&ts.seconds) {
        return None;
    }
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

pub fn action(action: MachineAction) -> pb::MachineAction {
    pb::MachineAction {
        status: status_to_proto(&action.status).into(),
        id: action.id,
        r#type: action.action_type,
        scope: action.scope.unwrap_or_default(),
        machine_id: action.machine_id,
        computer_dns_name: action.computer_dns_name.unwrap_or_default(),
        requestor: action.requestor.unwrap_or_default(),
        requestor_comment: action.requestor_comment.unwrap_or_default(),
        creation_time: action.creation_time.map(timestamp),
        last_update_time: action.last_update_time.map(timestamp),
        cancellation_requestor: action.cancellation_requestor.unwrap_or_default(),
        cancellation_comment: action.cancellation_comment.unwrap_or_default(),
        cancellation_time: action.cancellation_time.map(timestamp),
        title: action.title.unwrap_or_default(),
        external_id: action.external_id.unwrap_or_default(),
    }
}

pub fn update(event: ScanEvent) -> pb::ScanUpdate {
    let event = match event {
        ScanEvent::Queued {
            position,
            estimated_start,
        } => pb::scan_update::Event::Queued(pb::Queued {
            position: u32::try_from(position).unwrap_or(u32::MAX),
            estimated_start: Some(timestamp(estimated_start)),
        }),
        ScanEvent::Action(a) => pb::scan_update::Event::Action(action(*a)),
        ScanEvent::Waiting(a) => pb::scan_update::Event::Waiting(pb::Waiting {
            action: Some(action(*a)),
        }),
        ScanEvent::Delayed {
            since,
            reason,
            gives_up_at,
        } => pb::scan_update::Event::Delayed(pb::Delayed {
            since: Some(timestamp(since)),
            reason,
            gives_up_at: Some(timestamp(gives_up_at)),
        }),
    };
    pb::ScanUpdate { event: Some(event) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let Err(Error::InvalidArgument(violations)) = scan_request("nope", 0, "", "a b") else {
            panic!("expected invalid argument");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["machine_id", "scan_type", "comment", "request_id"]);
    }

    #[test]
    fn a_valid_request_parses() {
        let request = scan_request(
            "1e5bc9d7e413ddd7902c2932e418702b84d0cc07",
            pb::ScanType::Full as i32,
            "INC-1",
            "",
        )
        .unwrap();
        assert_eq!(request.scan_type, ScanType::Full);
        assert!(request.request_id.is_none());
    }

    #[test]
    fn list_defaults_and_bounds() {
        let query = list_query(&pb::ListScansRequest::default()).unwrap();
        assert_eq!((query.top, query.skip), (DEFAULT_PAGE_SIZE, 0));
        let too_big = pb::ListScansRequest {
            page_size: MAX_PAGE_SIZE + 1,
            page_token: "garbage".into(),
            status: 99,
            ..Default::default()
        };
        let Err(Error::InvalidArgument(violations)) = list_query(&too_big) else {
            panic!("expected invalid argument");
        };
        assert_eq!(violations.len(), 3);
        let token = next_page_token(200);
        let next = pb::ListScansRequest {
            page_token: token,
            ..Default::default()
        };
        assert_eq!(list_query(&next).unwrap().skip, 200);
    }

    #[test]
    fn timestamps_round_trip() {
        let at = time::macros::datetime!(2026-11-26 09:14:05.3318207 UTC);
        assert_eq!(timestamp_from_proto(&timestamp(at)), Some(at));
    }
}
