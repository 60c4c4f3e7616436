//! Property tests of request validation (`convert`): arbitrary and adversarial field values
//! never panic, an accepted request holds only values of the documented syntax, and a refused
//! one names every bad field, in field order.
//!
//! The expected outcome of each field comes from an oracle written from the proto's field
//! documentation, not from the domain parsers, so the two can disagree. Bounded for CI: a fixed
//! number of cases from a fixed seed; `PROPTEST_CASES` and `PROPTEST_RNG_SEED` explore further.

use proptest::{prelude::*, test_runner::RngSeed};

use super::{convert, pb};
use crate::{
    domain::{FieldViolation, MAX_COMMENT_CHARS, MAX_REQUEST_ID_CHARS},
    error::Error,
    upstream::model,
};

/// Cases per property: the functions are pure and fast, so this costs milliseconds.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5ca9_7a7e);
    }
    // A failure prints its minimal input; nothing is written next to the sources.
    config.failure_persistence = None;
    config
}

// === oracles: the documented syntax of each field ===

fn machine_id_ok(raw: &str) -> bool {
    raw.len() == 40 && raw.bytes().all(|b| b.is_ascii_hexdigit())
}

fn scan_type_ok(raw: i32) -> bool {
    raw == pb::ScanType::Quick as i32 || raw == pb::ScanType::Full as i32
}

fn comment_ok(raw: &str) -> bool {
    let trimmed = raw.trim();
    !trimmed.is_empty()
        && trimmed.chars().count() <= MAX_COMMENT_CHARS
        && trimmed
            .chars()
            .all(|c| !c.is_control() || c == '\n' || c == '\t')
}

fn request_id_ok(raw: &str) -> bool {
    raw.chars().count() <= MAX_REQUEST_ID_CHARS
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
}

/// The canonical form every accepted action id takes: lowercase, hyphenated GUID.
fn is_canonical_guid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// A GUID in the documented (hyphenated) spelling, any case: always accepted.
fn is_hyphenated_guid(raw: &str) -> bool {
    is_canonical_guid(&raw.to_ascii_lowercase())
}

/// Characters that could change a URL path or an OData filter if an id carried them
/// unchanged into `api/machineactions/{id}`.
fn has_url_or_odata_syntax(raw: &str) -> bool {
    raw.chars().any(|c| {
        c.is_whitespace() || c.is_control() || "/\\?#%&'\"$=()+,;.".contains(c) || !c.is_ascii()
    })
}

fn fields(result: Result<impl std::fmt::Debug, Error>) -> Vec<&'static str> {
    match result {
        Ok(_) => Vec::new(),
        Err(Error::InvalidArgument(violations)) => violations
            .iter()
            .map(|v: &FieldViolation| v.field)
            .collect(),
        Err(other) => panic!("validation failed with a non-validation error: {other:?}"),
    }
}

// === strategies ===

/// Hostile strings: injection, traversal, unicode tricks, control characters, sizes.
fn adversarial() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        String::new(),
        " ".into(),
        "\t\n\r".into(),
        "\0".into(),
        "nul\0byte".into(),
        "../".into(),
        "..%2F..%2Fmachines".into(),
        "%2F".into(),
        "?$filter=id eq 'x'".into(),
        "#fragment".into(),
        "'".into(),
        "' or 1 eq 1 or '".into(),
        "\u{202e}gnp.exe".into(),
        "🦀🦀🦀".into(),
        "e\u{301}\u{301}\u{301}".into(),
        "\u{feff}".into(),
        "\u{7f}".into(),
        "a".repeat(10_000),
        "🦀".repeat(MAX_COMMENT_CHARS),
        "🦀".repeat(MAX_COMMENT_CHARS + 1),
        "1e5bc9d7e413ddd7902c2932e418702b84d0cc07/..".into(),
        "1e5bc9d7e413ddd7902c2932e418702b84d0cc0/".into(),
        " 1e5bc9d7e413ddd7902c2932e418702b84d0cc07".into(),
        "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37/cancel".into(),
        "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37?$top=1".into(),
        "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c3%37".into(),
        "{7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37}".into(),
        "urn:uuid:7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37".into(),
        "7f3c2a915d4e4b8a9c1f2e6d8b0a4c37".into(),
    ])
}

/// Anything a caller could send for a string field, biased towards the edges of validity.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => adversarial(),
        2 => any::<String>(),
        1 => "[ -~]{0,48}",
        1 => "[\\PC\\t\\n]{0,1100}",
    ]
}

fn machine_id() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[0-9a-fA-F]{40}",
        1 => "[0-9a-fA-F]{38,42}",
        1 => "[0-9a-fA-F]{20}[g-z/'%?# .][0-9a-fA-F]{19}",
        2 => any_text(),
    ]
}

fn action_id() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        1 => "[0-9a-f-]{34,38}",
        1 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{11}[/'%?#. g]",
        2 => any_text(),
    ]
}

fn comment() -> impl Strategy<Value = String> {
    prop_oneof![2 => "[ -~]{1,80}", 2 => any_text()]
}

fn request_id() -> impl Strategy<Value = String> {
    prop_oneof![2 => "[A-Za-z0-9_.:/-]{0,130}", 2 => any_text()]
}

fn enum_number() -> impl Strategy<Value = i32> {
    prop_oneof![2 => -2..10i32, 1 => any::<i32>(), 1 => Just(i32::MIN), 1 => Just(i32::MAX)]
}

fn timestamp() -> impl Strategy<Value = prost_types::Timestamp> {
    let seconds = prop_oneof![
        // 1970 to 2100: the everyday range.
        2 => 0..4_102_444_800i64,
        // Around the ends of google.protobuf.Timestamp's range (years 1 and 9999).
        1 => -62_135_596_900..-62_135_596_700i64,
        1 => 253_402_300_700..253_402_300_900i64,
        1 => any::<i64>(),
    ];
    let nanos = prop_oneof![3 => 0..1_000_000_000i32, 1 => any::<i32>()];
    (seconds, nanos).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
}

fn page_token() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        2 => any::<u32>().prop_map(convert::next_page_token),
        1 => "o[-+]?[0-9]{0,12}",
        2 => any_text(),
    ]
}

fn list_request() -> impl Strategy<Value = pb::ListScansRequest> {
    let machine = prop_oneof![1 => Just(String::new()), 3 => machine_id()];
    let page_size = prop_oneof![2 => 0..1100u32, 1 => any::<u32>()];
    (
        machine,
        enum_number(),
        prop::option::of(timestamp()),
        page_size,
        page_token(),
    )
        .prop_map(
            |(machine_id, status, created_after, page_size, page_token)| pb::ListScansRequest {
                machine_id,
                status,
                created_after,
                page_size,
                page_token,
            },
        )
}

// === properties ===

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scan_request_accepts_exactly_the_documented_syntax(
        machine in machine_id(),
        scan_type in enum_number(),
        comment in comment(),
        request_id in request_id(),
    ) {
        let mut expected = Vec::new();
        for (ok, field) in [
            (machine_id_ok(&machine), "machine_id"),
            (scan_type_ok(scan_type), "scan_type"),
            (comment_ok(&comment), "comment"),
            (request_id_ok(&request_id), "request_id"),
        ] {
            if !ok {
                expected.push(field);
            }
        }
        let result = convert::scan_request(&machine, scan_type, &comment, &request_id);
        if let Ok(parsed) = &result {
            // What goes upstream is canonical and free of anything a URL or a body could misread.
            prop_assert_eq!(parsed.machine_id.as_str(), machine.to_ascii_lowercase());
            prop_assert!(parsed.machine_id.as_str().bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
            prop_assert_eq!(parsed.comment.as_str(), comment.trim());
            prop_assert_eq!(
                parsed.request_id.as_ref().map(|id| id.as_str()),
                Some(request_id.as_str()).filter(|id| !id.is_empty())
            );
        }
        prop_assert_eq!(fields(result), expected);
    }

    #[test]
    fn action_ids_are_guids_and_carry_no_url_or_odata_syntax(raw in action_id()) {
        match convert::action_id(&raw) {
            Ok(id) => {
                prop_assert!(is_canonical_guid(id.as_str()), "{:?} became {:?}", raw, id);
                prop_assert!(!has_url_or_odata_syntax(id.as_str()));
                // Whatever spelling was accepted, the same 128 bits come out.
                let hex = |s: &str| {
                    s.to_ascii_lowercase()
                        .trim_start_matches("urn:uuid:")
                        .chars()
                        .filter(char::is_ascii_hexdigit)
                        .collect::<String>()
                };
                prop_assert_eq!(hex(&raw), hex(id.as_str()));
            }
            Err(err) => {
                prop_assert!(!is_hyphenated_guid(&raw), "{:?} refused: {:?}", raw, err);
                prop_assert_eq!(fields(Err::<(), _>(err)), ["action_id"]);
            }
        }
        if has_url_or_odata_syntax(&raw) {
            prop_assert!(convert::action_id(&raw).is_err(), "{:?} accepted", raw);
        }
    }

    #[test]
    fn cancel_request_names_each_bad_field(raw_id in action_id(), comment in comment()) {
        let request = pb::CancelScanRequest { action_id: raw_id.clone(), comment: comment.clone() };
        let id_ok = convert::action_id(&raw_id).is_ok();
        let mut expected = Vec::new();
        if !id_ok {
            expected.push("action_id");
        }
        if !comment_ok(&comment) {
            expected.push("comment");
        }
        let result = convert::cancel_request(&request);
        if let Ok(parsed) = &result {
            prop_assert!(is_canonical_guid(parsed.action_id.as_str()));
            prop_assert_eq!(parsed.comment.as_str(), comment.trim());
        }
        prop_assert_eq!(fields(result), expected);
    }

    #[test]
    fn list_query_accepts_exactly_the_documented_syntax(request in list_request()) {
        let machine_ok = request.machine_id.is_empty() || machine_id_ok(&request.machine_id);
        let status_ok = (0..=6).contains(&request.status);
        // google.protobuf.Timestamp's documented range, 0001-01-01 to 9999-12-31 (UTC).
        let created_ok = request.created_after.as_ref().is_none_or(|ts| {
            (0..1_000_000_000).contains(&ts.nanos)
                && (-62_135_596_800..=253_402_300_799).contains(&ts.seconds)
        });
        let size_ok = request.page_size <= convert::MAX_PAGE_SIZE;
        let token_ok = request.page_token.is_empty()
            || request
                .page_token
                .strip_prefix('o')
                .is_some_and(|n| n.parse::<u32>().is_ok());
        let mut expected = Vec::new();
        for (ok, field) in [
            (machine_ok, "machine_id"),
            (status_ok, "status"),
            (created_ok, "created_after"),
            (size_ok, "page_size"),
            (token_ok, "page_token"),
        ] {
            if !ok {
                expected.push(field);
            }
        }
        let result = convert::list_query(&request);
        if let Ok(query) = &result {
            prop_assert!((1..=convert::MAX_PAGE_SIZE).contains(&query.top));
            if request.page_size != 0 {
                prop_assert_eq!(query.top, request.page_size);
            }
            if let Some(at) = query.created_after {
                // The time goes into an OData filter as an RFC 3339 literal: it must have one.
                let literal = model::format_timestamp(at);
                prop_assert_eq!(model::parse_timestamp(Some(&literal)), Some(at), "{}", literal);
            }
            if let Some(id) = &query.machine_id {
                prop_assert_eq!(id.as_str(), request.machine_id.to_ascii_lowercase());
            }
        }
        prop_assert_eq!(fields(result), expected);
    }

    #[test]
    fn page_tokens_round_trip(skip in any::<u32>()) {
        let request = pb::ListScansRequest {
            page_token: convert::next_page_token(skip),
            ..Default::default()
        };
        prop_assert_eq!(convert::list_query(&request).map(|q| q.skip).ok(), Some(skip));
    }

    #[test]
    fn all_invalid_requests_report_every_field(
        machine in "[g-z/'%?# ]{1,50}",
        scan_type in prop_oneof![Just(0), 3..=i32::MAX, i32::MIN..0],
        comment in prop_oneof![Just(String::new()), "[ \t\n]{1,5}", "[a-z]{0,5}\u{0}[a-z]{0,5}", "[a-z]{1001,1010}"],
        request_id in "[a-z]{0,5}[ '%?#+=\u{e9}][a-z]{0,5}",
        status in prop_oneof![7..=i32::MAX, i32::MIN..0],
        nanos in prop_oneof![1_000_000_000..=i32::MAX, i32::MIN..0],
        page_size in (convert::MAX_PAGE_SIZE + 1)..=u32::MAX,
        page_token in "[a-np-z0-9 '%?#-]{1,20}",
    ) {
        prop_assert_eq!(
            fields(convert::scan_request(&machine, scan_type, &comment, &request_id)),
            ["machine_id", "scan_type", "comment", "request_id"]
        );
        let cancel = pb::CancelScanRequest { action_id: machine.clone(), comment };
        prop_assert_eq!(fields(convert::cancel_request(&cancel)), ["action_id", "comment"]);
        let list = pb::ListScansRequest {
            machine_id: machine,
            status,
            created_after: Some(prost_types::Timestamp { seconds: 0, nanos }),
            page_size,
            page_token,
        };
        prop_assert_eq!(
            fields(convert::list_query(&list)),
            ["machine_id", "status", "created_after", "page_size", "page_token"]
        );
    }
}
