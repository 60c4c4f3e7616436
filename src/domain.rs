//! Domain types, valid by construction: a value of these types has already passed validation,
//! so nothing downstream re-checks it and nothing invalid reaches the upstream API.

use std::fmt;

use time::OffsetDateTime;

/// The longest comment accepted on a scan or a cancellation (characters).
pub const MAX_COMMENT_CHARS: usize = 1000;
/// The longest idempotency key accepted (characters).
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// One invalid field of a request, as reported in `google.rpc.BadRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}

/// A Defender device id: 40 hexadecimal characters, kept lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MachineId(String);

impl MachineId {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldViolation> {
        if raw.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        if raw.len() != 40 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FieldViolation::new(
                field,
                "must be a Defender device id: 40 hexadecimal characters",
            ));
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A machine action id: a GUID, kept in lowercase hyphenated form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActionId(String);

impl ActionId {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldViolation> {
        if raw.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        uuid::Uuid::try_parse(raw)
            .map(|id| Self(id.hyphenated().to_string()))
            .map_err(|_| {
                FieldViolation::new(
                    field,
                    "must be a machine action id (a GUID such as 7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37)",
                )
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of antivirus scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanType {
    Quick,
    Full,
}

impl ScanType {
    /// The exact spelling the Defender API requires (values are case-sensitive upstream).
    pub fn as_upstream(self) -> &'static str {
        match self {
            ScanType::Quick => "Quick",
            ScanType::Full => "Full",
        }
    }

    /// Whether a scan of `scope` (as Defender reports it) is at least as thorough as this
    /// one: every scan covers a Quick one, only a Full one covers a Full one. A scan whose
    /// scope Defender does not report is taken for the weaker.
    pub fn satisfied_by(self, scope: Option<&str>) -> bool {
        match self {
            ScanType::Quick => true,
            ScanType::Full => scope == Some(ScanType::Full.as_upstream()),
        }
    }
}

/// A free-text comment stored on an action: required, bounded, printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment(String);

impl Comment {
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldViolation> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldViolation::new(
                field,
                "is required: say who asked for this and why",
            ));
        }
        let chars = trimmed.chars().count();
        if chars > MAX_COMMENT_CHARS {
            return Err(FieldViolation::new(
                field,
                format!("is {chars} characters long; at most {MAX_COMMENT_CHARS} are allowed"),
            ));
        }
        if trimmed
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            return Err(FieldViolation::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An optional idempotency key chosen by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    /// Empty means "no key".
    pub fn parse_optional(field: &'static str, raw: &str) -> Result<Option<Self>, FieldViolation> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.chars().count() > MAX_REQUEST_ID_CHARS
            || !raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
        {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {MAX_REQUEST_ID_CHARS} characters of A-Z, a-z, 0-9 and -_.:/"
                ),
            ));
        }
        Ok(Some(Self(raw.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated request to start a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRequest {
    pub machine_id: MachineId,
    pub scan_type: ScanType,
    pub comment: Comment,
    pub request_id: Option<RequestId>,
}

/// A validated request to cancel an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub action_id: ActionId,
    pub comment: Comment,
}

/// Filters for listing antivirus-scan actions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListQuery {
    pub machine_id: Option<MachineId>,
    pub status: Option<ActionStatus>,
    pub created_after: Option<OffsetDateTime>,
    pub top: u32,
    pub skip: u32,
}

/// The lifecycle status of a machine action, as Defender reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ActionStatus {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    TimeOut,
    Cancelled,
    /// A value this version does not know; kept so nothing is lost, never treated as final.
    Other(String),
}

impl ActionStatus {
    /// Parses Defender's spelling; the older docs' `Canceled` is accepted too.
    pub fn from_upstream(raw: &str) -> Self {
        match raw {
            "Pending" => Self::Pending,
            "InProgress" => Self::InProgress,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            "TimeOut" => Self::TimeOut,
            "Cancelled" | "Canceled" => Self::Cancelled,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Defender's spelling, as used in OData filters.
    pub fn as_upstream(&self) -> &str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::TimeOut => "TimeOut",
            Self::Cancelled => "Cancelled",
            Self::Other(raw) => raw,
        }
    }

    /// Final statuses never change again; a stream ends after sending one.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimeOut | Self::Cancelled
        )
    }
}

/// A Defender machine action. Optional fields are absent or null upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineAction {
    pub id: String,
    pub action_type: String,
    pub scope: Option<String>,
    pub status: ActionStatus,
    pub machine_id: String,
    pub computer_dns_name: Option<String>,
    pub requestor: Option<String>,
    pub requestor_comment: Option<String>,
    pub creation_time: Option<OffsetDateTime>,
    pub last_update_time: Option<OffsetDateTime>,
    pub cancellation_requestor: Option<String>,
    pub cancellation_comment: Option<String>,
    pub cancellation_time: Option<OffsetDateTime>,
    pub title: Option<String>,
    pub external_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_scan_covers_both_types_and_a_quick_or_unknown_one_only_quick() {
        for scope in [Some("Quick"), Some("Full"), None] {
            assert!(ScanType::Quick.satisfied_by(scope), "{scope:?}");
        }
        assert!(ScanType::Full.satisfied_by(Some("Full")));
        assert!(!ScanType::Full.satisfied_by(Some("Quick")));
        assert!(!ScanType::Full.satisfied_by(None));
    }

    #[test]
    fn machine_id_is_forty_hex_characters_kept_lowercase() {
        let id =
            MachineId::parse("machine_id", "1E5BC9D7E413DDD7902C2932E418702B84D0CC07").unwrap();
        assert_eq!(id.as_str(), "1e5bc9d7e413ddd7902c2932e418702b84d0cc07");
        for bad in [
            "",
            "1e5bc9",
            "zz5bc9d7e413ddd7902c2932e418702b84d0cc07",
            "1e5bc9d7e413ddd7902c2932e418702b84d0cc07 ",
        ] {
            assert!(MachineId::parse("machine_id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn action_id_must_be_a_guid() {
        let id = ActionId::parse("action_id", "7F3C2A91-5D4E-4B8A-9C1F-2E6D8B0A4C37").unwrap();
        assert_eq!(id.as_str(), "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37");
        assert!(ActionId::parse("action_id", "../../machines").is_err());
        assert!(ActionId::parse("action_id", "").is_err());
    }

    #[test]
    fn comment_is_required_bounded_and_printable() {
        assert!(Comment::parse("comment", "  ").is_err());
        assert!(Comment::parse("comment", &"x".repeat(MAX_COMMENT_CHARS + 1)).is_err());
        assert!(Comment::parse("comment", "bell\u{7}").is_err());
        assert_eq!(
            Comment::parse("comment", " INC-4711 ").unwrap().as_str(),
            "INC-4711"
        );
        // Characters, not bytes, are counted.
        assert!(Comment::parse("comment", &"é".repeat(MAX_COMMENT_CHARS)).is_ok());
    }

    #[test]
    fn statuses_round_trip_and_only_four_are_final() {
        for raw in [
            "Pending",
            "InProgress",
            "Succeeded",
            "Failed",
            "TimeOut",
            "Cancelled",
        ] {
            assert_eq!(ActionStatus::from_upstream(raw).as_upstream(), raw);
        }
        assert_eq!(
            ActionStatus::from_upstream("Canceled"),
            ActionStatus::Cancelled
        );
        assert!(!ActionStatus::from_upstream("Paused").is_final());
        assert!(ActionStatus::TimeOut.is_final());
        assert!(!ActionStatus::InProgress.is_final());
    }

    #[test]
    fn request_id_is_optional_and_bounded() {
        assert_eq!(RequestId::parse_optional("request_id", "").unwrap(), None);
        assert!(
            RequestId::parse_optional("request_id", "order-42/scan:1")
                .unwrap()
                .is_some()
        );
        assert!(RequestId::parse_optional("request_id", "has space").is_err());
        assert!(RequestId::parse_optional("request_id", &"a".repeat(129)).is_err());
    }
}
