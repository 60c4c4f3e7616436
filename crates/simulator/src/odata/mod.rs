//! A small OData `$filter` parser and evaluator for machine actions.
//!
//! Grammar (recursive descent, lowest precedence first):
//!
//! ```text
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | primary
//! primary := "(" or ")" | field op value | field "in" "(" value ("," value)* ")"
//! value   := 'quoted string' | datetime | null
//! ```
//!
//! Only the documented fields filter (upstream-api.md §3.2): `id`, `machineId`, `requestor`
//! (strings: `eq`, `ne`, `in`), `status` and `type` (enums: the same operators, and only their
//! documented members, in their exact case) and `creationDateTimeUtc` (also `gt ge lt le`,
//! against an unquoted DateTimeOffset literal). Another property of MachineAction, such as
//! `scope`, is refused as OData refuses a property not allowed in `$filter`, so a query that
//! works here works against Defender. Field names are case-insensitive because the samples write
//! them PascalCase; string values compare case-insensitively, like the service's database
//! collation [inf]. The parser is in `parse.rs`.

use std::cmp::Ordering;

use time::OffsetDateTime;

mod parse;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Id,
    Status,
    MachineId,
    Type,
    Requestor,
    CreationDateTimeUtc,
}

/// The other properties of MachineAction: they exist, but `$filter` may not use them.
const NOT_FILTERABLE: &[&str] = &[
    "scope",
    "title",
    "requestorComment",
    "computerDnsName",
    "lastUpdateDateTimeUtc",
    "cancellationRequestor",
    "cancellationComment",
    "cancellationDateTimeUtc",
    "errorHResult",
    "externalId",
    "requestSource",
    "relatedFileInfo",
    "commands",
    "troubleshootInfo",
];

/// The documented `status` values (spelled `Cancelled`, issue 5896).
const STATUSES: &[&str] = &[
    "Pending",
    "InProgress",
    "Succeeded",
    "Failed",
    "TimeOut",
    "Cancelled",
];

/// The documented `type` values.
const TYPES: &[&str] = &[
    "RunAntiVirusScan",
    "Offboard",
    "LiveResponse",
    "CollectInvestigationPackage",
    "Isolate",
    "Unisolate",
    "StopAndQuarantineFile",
    "RestrictCodeExecution",
    "UnrestrictCodeExecution",
];

impl Field {
    /// The field a `$filter` names, or the message of the `ODataError` for it.
    pub(super) fn parse(name: &str) -> Result<Self, String> {
        let documented = [
            ("id", Self::Id),
            ("status", Self::Status),
            ("machineId", Self::MachineId),
            ("type", Self::Type),
            ("requestor", Self::Requestor),
            ("creationDateTimeUtc", Self::CreationDateTimeUtc),
        ]
        .into_iter()
        .find_map(|(n, f)| n.eq_ignore_ascii_case(name).then_some(f));
        if let Some(field) = documented {
            return Ok(field);
        }
        match NOT_FILTERABLE.iter().find(|n| n.eq_ignore_ascii_case(name)) {
            Some(property) => Err(format!(
                "The property '{property}' cannot be used in the $filter query option."
            )),
            None => Err(format!(
                "Could not find a property named '{}' on type 'microsoft.windowsDefenderATP.api.MachineAction'.",
                parse::quote(name)
            )),
        }
    }

    /// The members of an enum-typed field: its only values, case-sensitive.
    pub(super) fn members(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Status => Some(STATUSES),
            Self::Type => Some(TYPES),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Text(String),
    Time(OffsetDateTime),
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filter {
    Or(Box<Filter>, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare(Field, Op, Value),
    In(Field, Vec<Value>),
}

/// What a filter is evaluated against.
pub(crate) trait Record {
    fn text(&self, field: Field) -> Option<&str>;
    fn time(&self, field: Field) -> Option<OffsetDateTime>;
}

impl Filter {
    /// Parses a `$filter` value; the error is the message of a 400 `ODataError`.
    pub(crate) fn parse(src: &str) -> Result<Self, String> {
        parse::parse(src)
    }

    pub(crate) fn matches(&self, r: &impl Record) -> bool {
        match self {
            Self::Or(a, b) => a.matches(r) || b.matches(r),
            Self::And(a, b) => a.matches(r) && b.matches(r),
            Self::Not(a) => !a.matches(r),
            Self::Compare(field, op, value) => compare(r, *field, *op, value),
            Self::In(field, values) => values.iter().any(|v| compare(r, *field, Op::Eq, v)),
        }
    }
}

fn compare(r: &impl Record, field: Field, op: Op, value: &Value) -> bool {
    // Enum members were checked exactly when parsed; other strings follow the collation.
    let equal = |t: &str, v: &str| match field.members() {
        Some(_) => t == v,
        None => t.eq_ignore_ascii_case(v),
    };
    let ordering = match value {
        Value::Text(v) => r.text(field).map(|t| {
            if equal(t, v) {
                Ordering::Equal
            } else {
                Ordering::Less
            }
        }),
        Value::Time(v) => r.time(field).map(|t| t.cmp(v)),
        Value::Null => {
            let is_null = match field {
                Field::CreationDateTimeUtc => r.time(field).is_none(),
                _ => r.text(field).is_none(),
            };
            return is_null == (op == Op::Eq);
        }
    };
    match (op, ordering) {
        (Op::Ne, o) => o != Some(Ordering::Equal),
        (_, None) => false,
        (Op::Eq, Some(o)) => o == Ordering::Equal,
        (Op::Gt, Some(o)) => o == Ordering::Greater,
        (Op::Ge, Some(o)) => o != Ordering::Less,
        (Op::Lt, Some(o)) => o == Ordering::Less,
        (Op::Le, Some(o)) => o != Ordering::Greater,
    }
}
