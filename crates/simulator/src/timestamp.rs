//! Timestamp formats of the two upstream services.
//!
//! Defender writes .NET `DateTime` values: UTC, `Z`, 100 ns ticks (7 fractional digits) with
//! trailing zeros dropped (`2024-01-02T13:39:46.773821Z`). Entra writes `2026-11-26 09:00:01Z`
//! inside error bodies.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Drops sub-tick precision, so a value read back through the API compares equal to the stored
/// one (OData `eq` on `creationDateTimeUtc` relies on it).
pub(crate) fn to_tick(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 100 * 100)
        .unwrap_or(t)
}

/// `2024-01-02T13:39:46.7738206Z`; no fraction at all when it is zero, as .NET's `FFFFFFF` does.
pub(crate) fn defender(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let mut out = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let ticks = t.nanosecond() / 100;
    if ticks > 0 {
        let fraction = format!("{ticks:07}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// `2026-11-26 09:00:01Z`, the Entra error-body form.
pub(crate) fn entra(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// An OData `DateTimeOffset` literal: RFC 3339 with any number of fractional digits and a `Z` or
/// numeric offset.
pub(crate) fn parse_literal(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn defender_format_keeps_seven_digits_and_drops_trailing_zeros() {
        let t = datetime!(2024-01-02 13:39:46.773_820_6 UTC);
        assert_eq!(defender(t), "2024-01-02T13:39:46.7738206Z");
        assert_eq!(
            defender(datetime!(2024-01-02 13:39:46.773_821 UTC)),
            "2024-01-02T13:39:46.773821Z"
        );
        assert_eq!(
            defender(datetime!(2024-01-02 13:39:46.000_000_099 UTC)),
            "2024-01-02T13:39:46Z"
        );
        assert_eq!(
            defender(datetime!(2024-01-02 15:39:46.5 +2)),
            "2024-01-02T13:39:46.5Z"
        );
    }

    #[test]
    fn entra_format_and_tick_truncation() {
        assert_eq!(
            entra(datetime!(2026-11-26 09:00:01.9 UTC)),
            "2026-11-26 09:00:01Z"
        );
        assert_eq!(
            to_tick(datetime!(2026-11-26 09:00:01.123_456_789 UTC)).nanosecond(),
            123_456_700
        );
    }

    #[test]
    fn literals_accept_fractions_and_offsets() {
        assert_eq!(
            parse_literal("2024-01-02T13:39:46Z"),
            Some(datetime!(2024-01-02 13:39:46 UTC))
        );
        assert_eq!(
            parse_literal("2024-01-02T15:39:46.7738206+02:00"),
            Some(datetime!(2024-01-02 13:39:46.773_820_6 UTC))
        );
        assert_eq!(parse_literal("2024-01-02"), None);
        assert_eq!(parse_literal("yesterday"), None);
    }
}
