//! OData query strings for `GET /api/machineactions`.

use std::fmt::Write;

/// One `$filter` clause; clauses are joined with `and`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    /// `field eq 'value'`
    Eq(&'static str, String),
    /// `field ge value` on a date-time field (unquoted literal).
    GeDateTime(&'static str, String),
    /// `(field eq 'a' or field eq 'b' ...)`: any of several values.
    AnyOf(&'static str, Vec<String>),
}

/// Renders the `$filter` expression; string literals escape `'` as `''`, as OData requires.
pub fn filter(clauses: &[Clause]) -> String {
    let mut out = String::new();
    for (i, clause) in clauses.iter().enumerate() {
        if i > 0 {
            out.push_str(" and ");
        }
        match clause {
            Clause::Eq(field, value) => {
                let _ = write!(out, "{field} eq '{}'", value.replace('\'', "''"));
            }
            Clause::GeDateTime(field, value) => {
                let _ = write!(out, "{field} ge {value}");
            }
            Clause::AnyOf(field, values) => {
                out.push('(');
                for (j, value) in values.iter().enumerate() {
                    if j > 0 {
                        out.push_str(" or ");
                    }
                    let _ = write!(out, "{field} eq '{}'", value.replace('\'', "''"));
                }
                out.push(')');
            }
        }
    }
    out
}

/// Percent-encodes a query component. Spaces become `%20`, not `+`, which every OData server
/// decodes the same way.
pub fn encode(component: &str) -> String {
    let mut out = String::with_capacity(component.len());
    for byte in component.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_clauses_and_escapes_quotes() {
        let f = filter(&[
            Clause::Eq("machineId", "1e5b".into()),
            Clause::Eq("requestor", "O'Brien".into()),
            Clause::GeDateTime("creationDateTimeUtc", "2026-11-26T09:00:00Z".into()),
        ]);
        assert_eq!(
            f,
            "machineId eq '1e5b' and requestor eq 'O''Brien' and creationDateTimeUtc ge 2026-11-26T09:00:00Z"
        );
    }

    #[test]
    fn any_of_is_a_parenthesised_disjunction() {
        let f = filter(&[
            Clause::AnyOf("id", vec!["a".into(), "b".into()]),
            Clause::Eq("type", "RunAntiVirusScan".into()),
        ]);
        assert_eq!(f, "(id eq 'a' or id eq 'b') and type eq 'RunAntiVirusScan'");
    }

    #[test]
    fn encodes_spaces_and_reserved_characters() {
        assert_eq!(encode("a eq 'b'"), "a%20eq%20%27b%27");
        assert_eq!(encode("2026-11-26T09:00:00Z"), "2026-11-26T09%3A00%3A00Z");
    }
}
