//! `$filter` parser and evaluator, without HTTP.

use time::OffsetDateTime;
use time::macros::datetime;

use crate::odata::{Field, Filter, Op, Record, Value};

struct Row {
    status: &'static str,
    requestor: Option<&'static str>,
    created: OffsetDateTime,
}

impl Record for Row {
    fn text(&self, field: Field) -> Option<&str> {
        match field {
            Field::Status => Some(self.status),
            Field::Requestor => self.requestor,
            Field::Type => Some("RunAntiVirusScan"),
            Field::MachineId => Some("1e5bc9d7e413ddd7902c2932e418702b84d0cc07"),
            _ => Some("x"),
        }
    }

    fn time(&self, _: Field) -> Option<OffsetDateTime> {
        Some(self.created)
    }
}

fn row() -> Row {
    Row {
        status: "Pending",
        requestor: Some("Analyst@contoso.com"),
        created: datetime!(2026-11-26 09:14:05.3318207 UTC),
    }
}

fn matches(filter: &str) -> bool {
    Filter::parse(filter)
        .unwrap_or_else(|e| panic!("{filter}: {e}"))
        .matches(&row())
}

#[test]
fn comparisons_and_boolean_logic() {
    for yes in [
        "status eq 'Pending'",
        "Status ne 'Succeeded'",
        "status eq 'Pending' and requestor eq 'analyst@contoso.com'",
        "status eq 'Failed' or type eq 'RunAntiVirusScan'",
        "not status eq 'Failed'",
        "not (status eq 'Failed' or type eq 'Isolate')",
        "((status eq 'Pending'))",
        "status in ('Succeeded', 'Pending')",
        "machineId eq '1E5BC9D7E413DDD7902C2932E418702B84D0CC07'",
        "requestor ne null",
        "creationDateTimeUtc gt 2026-11-26T09:14:05Z",
        "creationDateTimeUtc le 2026-11-26T09:14:05.3318207Z",
        "creationDateTimeUtc eq 2026-11-26T10:14:05.3318207+01:00",
        "creationDateTimeUtc lt 2026-11-27T00:00:00Z and creationDateTimeUtc gt 2026-11-26T00:00:00Z",
    ] {
        assert!(matches(yes), "{yes}");
    }
    for no in [
        "status eq 'Failed'",
        "status ne 'Pending'",
        "status eq 'Pending' and type eq 'Isolate'",
        "requestor eq null",
        "creationDateTimeUtc lt 2026-11-26T09:14:05.3318207Z",
        "status in ('Succeeded')",
    ] {
        assert!(!matches(no), "{no}");
    }
}

#[test]
fn only_documented_fields_and_enum_members_in_their_case_are_accepted() {
    let cases = [
        (
            "scope eq 'Full'",
            "The property 'scope' cannot be used in the $filter query option.",
        ),
        (
            "Scope eq 'Quick'",
            "The property 'scope' cannot be used in the $filter query option.",
        ),
        (
            "computerDnsName eq 'ws-1'",
            "The property 'computerDnsName' cannot be used in the $filter query option.",
        ),
        (
            "status eq 'pending'",
            "The string 'pending' is not a valid enumeration type constant. Use one of: Pending, InProgress, Succeeded, Failed, TimeOut, Cancelled.",
        ),
        (
            "status eq 'Canceled'",
            "The string 'Canceled' is not a valid enumeration type constant.",
        ),
        (
            "status in ('Pending', 'INPROGRESS')",
            "The string 'INPROGRESS' is not a valid enumeration type constant.",
        ),
        (
            "type eq 'runantivirusscan'",
            "The string 'runantivirusscan' is not a valid enumeration type constant.",
        ),
        (
            "type ne 'Live Response'",
            "The string 'Live Response' is not a valid enumeration type constant.",
        ),
        (
            "creationDateTimeUtc ge '2026-11-26T09:14:05Z'",
            "Found operand types 'Edm.DateTimeOffset' and 'Edm.String'",
        ),
    ];
    for (filter, expected) in cases {
        let err = Filter::parse(filter).unwrap_err();
        assert!(err.contains(expected), "{filter:?}: {err}");
    }
    // Every documented status and type parses; the samples' PascalCase field names too.
    for status in [
        "Pending",
        "InProgress",
        "Succeeded",
        "Failed",
        "TimeOut",
        "Cancelled",
    ] {
        assert!(
            Filter::parse(&format!("Status eq '{status}'")).is_ok(),
            "{status}"
        );
    }
    for kind in [
        "RunAntiVirusScan",
        "Offboard",
        "LiveResponse",
        "CollectInvestigationPackage",
        "Isolate",
        "Unisolate",
        "StopAndQuarantineFile",
        "RestrictCodeExecution",
        "UnrestrictCodeExecution",
    ] {
        assert!(
            Filter::parse(&format!("Type eq '{kind}'")).is_ok(),
            "{kind}"
        );
    }
    assert!(Filter::parse("Requestor eq 'Analyst@contoso.com' and Id eq 'x'").is_ok());
    assert!(Filter::parse("CreationDateTimeUtc ge 2026-11-26T09:14:05Z").is_ok());
}

#[test]
fn and_binds_tighter_than_or() {
    let parsed = Filter::parse("id eq 'a' or status eq 'Failed' and requestor eq 'c'").unwrap();
    let cmp = |f, v: &str| Box::new(Filter::Compare(f, Op::Eq, Value::Text(v.into())));
    assert_eq!(
        parsed,
        Filter::Or(
            cmp(Field::Id, "a"),
            Box::new(Filter::And(
                cmp(Field::Status, "Failed"),
                cmp(Field::Requestor, "c")
            ))
        )
    );
}

#[test]
fn quotes_are_escaped_by_doubling() {
    assert_eq!(
        Filter::parse("requestor eq 'O''Brien'").unwrap(),
        Filter::Compare(Field::Requestor, Op::Eq, Value::Text("O'Brien".into()))
    );
}

#[test]
fn errors_say_what_and_where() {
    let cases = [
        ("", "position 0"),
        (
            "status",
            "eq, ne, gt, ge, lt, le or in expected after 'status'",
        ),
        ("status equals 'x'", "found 'equals'"),
        ("status eq", "a value expected at the end"),
        ("status eq Pending", "must be a quoted string"),
        ("id eq 'x' and", "a property name expected at the end"),
        ("id eq 'x' 'y'", "unexpected 'y'"),
        ("id eq 'x' AND scope eq 'y'", "unexpected 'AND'"),
        ("(id eq 'x'", "')' expected at the end"),
        ("id eq 'x')", "unexpected ')'"),
        ("status eq 'x", "unterminated string literal at position 10"),
        ("size eq 'x'", "Could not find a property named 'size'"),
        (
            "status lt 'Pending'",
            "The operator 'lt' is not supported for property 'status'",
        ),
        ("creationDateTimeUtc gt null", "not supported"),
        (
            "creationDateTimeUtc gt 2026-13-01T00:00:00Z",
            "not a valid DateTimeOffset literal",
        ),
        ("status in 'x'", "'(' expected, found 'x'"),
        ("id in ('x',)", "a value expected, found ')'"),
        ("status eq ,", "a value expected, found ','"),
    ];
    for (filter, expected) in cases {
        let err = Filter::parse(filter).unwrap_err();
        assert!(err.contains(expected), "{filter:?}: {err}");
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!("{}id eq 'x'{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(
        Filter::parse(&deep)
            .unwrap_err()
            .contains("nested more than 50")
    );
    let nots = format!("{}id eq 'x'", "not ".repeat(10_000));
    assert!(Filter::parse(&nots).is_err());
    let ok = format!("{}status eq 'Pending'{}", "(".repeat(50), ")".repeat(50));
    assert!(matches(&ok));
}
