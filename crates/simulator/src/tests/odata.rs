//! `$filter` parser and evaluator, without HTTP.

use time::OffsetDateTime;
use time::macros::datetime;

use crate::odata::{Field, Filter, Op, Record, Value};

struct Row {
    status: &'static str,
    scope: Option<&'static str>,
    created: OffsetDateTime,
}

impl Record for Row {
    fn text(&self, field: Field) -> Option<&str> {
        match field {
            Field::Status => Some(self.status),
            Field::Scope => self.scope,
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
        scope: Some("Quick"),
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
        "status eq 'pending'",
        "Status ne 'Succeeded'",
        "status eq 'Pending' and scope eq 'Quick'",
        "status eq 'Done' or scope eq 'Quick'",
        "not status eq 'Done'",
        "not (status eq 'Done' or scope eq 'Full')",
        "((status eq 'Pending'))",
        "status in ('Succeeded', 'Pending')",
        "machineId eq '1E5BC9D7E413DDD7902C2932E418702B84D0CC07'",
        "scope ne null",
        "creationDateTimeUtc gt 2026-11-26T09:14:05Z",
        "creationDateTimeUtc ge '2026-11-26T09:14:05.3318207Z'",
        "creationDateTimeUtc le 2026-11-26T09:14:05.3318207Z",
        "creationDateTimeUtc eq 2026-11-26T10:14:05.3318207+01:00",
        "creationDateTimeUtc lt 2026-11-27T00:00:00Z and creationDateTimeUtc gt 2026-11-26T00:00:00Z",
    ] {
        assert!(matches(yes), "{yes}");
    }
    for no in [
        "status eq 'Done'",
        "status ne 'Pending'",
        "status eq 'Pending' and scope eq 'Full'",
        "scope eq null",
        "creationDateTimeUtc lt 2026-11-26T09:14:05.3318207Z",
        "status in ('Succeeded')",
    ] {
        assert!(!matches(no), "{no}");
    }
}

#[test]
fn and_binds_tighter_than_or() {
    let parsed = Filter::parse("status eq 'a' or status eq 'b' and scope eq 'c'").unwrap();
    let cmp = |f, v: &str| Box::new(Filter::Compare(f, Op::Eq, Value::Text(v.into())));
    assert_eq!(
        parsed,
        Filter::Or(
            cmp(Field::Status, "a"),
            Box::new(Filter::And(cmp(Field::Status, "b"), cmp(Field::Scope, "c")))
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
        ("status eq 'x' and", "a property name expected at the end"),
        ("status eq 'x' 'y'", "unexpected 'y'"),
        ("status eq 'x' AND scope eq 'y'", "unexpected 'AND'"),
        ("(status eq 'x'", "')' expected at the end"),
        ("status eq 'x')", "unexpected ')'"),
        ("status eq 'x", "unterminated string literal at position 10"),
        ("size eq 'x'", "Could not find a property named 'size'"),
        (
            "status lt 'x'",
            "The operator 'lt' is not supported for property 'status'",
        ),
        ("creationDateTimeUtc gt null", "not supported"),
        (
            "creationDateTimeUtc gt 2026-13-01T00:00:00Z",
            "not a valid DateTimeOffset literal",
        ),
        ("status in 'x'", "'(' expected, found 'x'"),
        ("status in ('x',)", "a value expected, found ')'"),
        ("status eq ,", "a value expected, found ','"),
    ];
    for (filter, expected) in cases {
        let err = Filter::parse(filter).unwrap_err();
        assert!(err.contains(expected), "{filter:?}: {err}");
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!("{}status eq 'x'{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(
        Filter::parse(&deep)
            .unwrap_err()
            .contains("nested more than 50")
    );
    let nots = format!("{}status eq 'x'", "not ".repeat(10_000));
    assert!(Filter::parse(&nots).is_err());
    let ok = format!("{}status eq 'Pending'{}", "(".repeat(50), ")".repeat(50));
    assert!(matches(&ok));
}
