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
//! Fields are `id`, `status`, `machineId`, `type`, `requestor`, `scope` (strings: `eq`, `ne`,
//! `in`) and `creationDateTimeUtc` (also `gt ge lt le`, literal quoted or not). Field names are
//! case-insensitive because the samples write them PascalCase; string values compare
//! case-insensitively, like the service's database collation. The parser is in `parse.rs`.

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
    Scope,
    CreationDateTimeUtc,
}

impl Field {
    pub(super) fn parse(name: &str) -> Option<Self> {
        [
            ("id", Self::Id),
            ("status", Self::Status),
            ("machineId", Self::MachineId),
            ("type", Self::Type),
            ("requestor", Self::Requestor),
            ("scope", Self::Scope),
            ("creationDateTimeUtc", Self::CreationDateTimeUtc),
        ]
        .into_iter()
        .find_map(|(n, f)| n.eq_ignore_ascii_case(name).then_some(f))
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
    let ordering = match value {
        Value::Text(v) => r.text(field).map(|t| {
            if t.eq_ignore_ascii_case(v) {
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
