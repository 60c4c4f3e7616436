//! Property tests of upstream response decoding, through [`DefenderClient`] itself: a fake
//! upstream service answers with arbitrary bytes, arbitrary JSON, and documented MachineAction
//! documents with mutated fields. Decoding never panics; a 2xx body either becomes the expected
//! actions or a `Malformed` error; any other status becomes an `Api` error.
//!
//! Bounded for CI: a fixed number of cases from a fixed seed; `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED` explore further.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use proptest::{collection::vec, prelude::*, test_runner::RngSeed};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tower::util::BoxCloneSyncService;

use super::{ActionQuery, CallContext, DefenderClient, Error, Response, model};
use crate::domain::{ActionId, ActionStatus, MachineAction, MachineId, ScanType};

/// Cases per property: no I/O, each case is one in-memory call.
const CASES: u32 = 256;

const ACTION_ID: &str = "7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37";
const MACHINE_ID: &str = "1e5bc9d7e413ddd7902c2932e418702b84d0cc07";

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0xdec0_de00);
    }
    // A failure prints its minimal input; nothing is written next to the sources.
    config.failure_persistence = None;
    config
}

// === the client over a canned answer ===

/// What the client's four calls make of one upstream answer.
#[derive(Debug)]
struct Decoded {
    get: Result<MachineAction, Error>,
    list: Result<Vec<MachineAction>, Error>,
    run: Result<MachineAction, Error>,
    cancel: Result<MachineAction, Error>,
}

fn answer(status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Decoded {
    let body = Bytes::from(body);
    let service = BoxCloneSyncService::new(tower::service_fn(move |_request| {
        let mut response = Response::new(body.clone());
        *response.status_mut() = status;
        *response.headers_mut() = headers.clone();
        std::future::ready(Ok::<_, Error>(response))
    }));
    let base = url::Url::parse("https://api.security.microsoft.com/").expect("a valid URL");
    let client = DefenderClient::new(base, service, crate::clock::Clock::system());
    let id = ActionId::parse("action_id", ACTION_ID).expect("a valid action id");
    let machine = MachineId::parse("machine_id", MACHINE_ID).expect("a valid machine id");
    let ctx = CallContext::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        Decoded {
            get: client.get_action(&id, &ctx).await,
            list: client.list_actions(&ActionQuery::default(), &ctx).await,
            run: client
                .run_antivirus_scan(&machine, ScanType::Quick, "INC-1", &ctx)
                .await,
            cancel: client.cancel_action(&id, "INC-1", &ctx).await,
        }
    })
}

fn ok(body: Vec<u8>) -> Decoded {
    answer(StatusCode::OK, HeaderMap::new(), body)
}

/// A 2xx answer decodes or is `Malformed`; nothing else.
fn decoded_or_malformed<T: std::fmt::Debug>(result: &Result<T, Error>) -> Result<(), String> {
    match result {
        Ok(_) | Err(Error::Malformed { .. }) => Ok(()),
        Err(other) => Err(format!("unexpected error: {other:?}")),
    }
}

fn check_2xx(decoded: &Decoded) -> Result<(), TestCaseError> {
    for outcome in [
        decoded_or_malformed(&decoded.get),
        decoded_or_malformed(&decoded.list),
        decoded_or_malformed(&decoded.run),
        decoded_or_malformed(&decoded.cancel),
    ] {
        outcome.map_err(TestCaseError::fail)?;
    }
    Ok(())
}

// === the expected decoding, written from the documented entity ===

/// The string fields of a MachineAction, by wire name.
const STRING_FIELDS: [&str; 15] = [
    "id",
    "type",
    "scope",
    "status",
    "machineId",
    "computerDnsName",
    "requestor",
    "requestorComment",
    "creationDateTimeUtc",
    "lastUpdateDateTimeUtc",
    "cancellationRequestor",
    "cancellationComment",
    "cancellationDateTimeUtc",
    "title",
    "externalId",
];

/// The docs' misspelling of `lastUpdateDateTimeUtc`, accepted as the same field.
const LAST_UPDATE_ALIAS: &str = "lastUpdateTimeUtc";

fn status_of(raw: &str) -> ActionStatus {
    match raw {
        "Pending" => ActionStatus::Pending,
        "InProgress" => ActionStatus::InProgress,
        "Succeeded" => ActionStatus::Succeeded,
        "Failed" => ActionStatus::Failed,
        "TimeOut" => ActionStatus::TimeOut,
        "Cancelled" | "Canceled" => ActionStatus::Cancelled,
        other => ActionStatus::Other(other.to_owned()),
    }
}

/// Whether an arbitrary JSON document is a decodable action: an object whose known fields are
/// strings or null (or absent), with a non-empty `id` and a `status`. Returns the id.
fn expected_id(doc: &Value) -> Option<String> {
    let object = doc.as_object()?;
    if object.contains_key("lastUpdateDateTimeUtc") && object.contains_key(LAST_UPDATE_ALIAS) {
        return None;
    }
    let known = STRING_FIELDS.iter().chain([&LAST_UPDATE_ALIAS]);
    if known
        .filter_map(|field| object.get(*field))
        .any(|v| !v.is_string() && !v.is_null())
    {
        return None;
    }
    object.get("status")?.as_str()?;
    object
        .get("id")?
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

// === strategies ===

/// Any JSON value, with keys that sometimes hit the entity's own.
fn json_value() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number,
        any::<String>().prop_map(Value::String),
        prop::sample::select(vec!["Pending", "Succeeded", "", ACTION_ID]).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(), inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    let known: Vec<String> = STRING_FIELDS
        .iter()
        .chain([&LAST_UPDATE_ALIAS, &"value", &"@odata.nextLink", &"error"])
        .map(|k| (*k).to_owned())
        .collect();
    prop_oneof![2 => prop::sample::select(known), 1 => any::<String>()]
}

/// One field of a mutated document.
#[derive(Debug, Clone)]
enum Field<T = String> {
    Absent,
    Null,
    Text(T),
    /// A value of the wrong JSON type.
    Wrong(Value),
}

impl<T> Field<T> {
    fn text(&self) -> Option<&T> {
        match self {
            Field::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The JSON this field puts into its document, if any.
    fn json(&self, text: impl FnOnce(&T) -> Value) -> Option<Value> {
        match self {
            Field::Absent => None,
            Field::Null => Some(Value::Null),
            Field::Text(t) => Some(text(t)),
            Field::Wrong(v) => Some(v.clone()),
        }
    }
}

fn wrong_type() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.0e308),
        json!(true),
        json!([]),
        json!(["Pending"]),
        json!({}),
        json!({"id": ACTION_ID}),
    ])
}

fn field<T: Clone + std::fmt::Debug>(
    text: impl Strategy<Value = T>,
) -> impl Strategy<Value = Field<T>> {
    prop_oneof![
        1 => Just(Field::Absent),
        1 => Just(Field::Null),
        6 => text.prop_map(Field::Text),
        1 => wrong_type().prop_map(Field::Wrong),
    ]
}

fn odd_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ -~]{0,40}",
        1 => any::<String>(),
        1 => Just("\u{0}\u{202e}🦀e\u{301}".to_owned()),
        1 => Just("x".repeat(20_000)),
    ]
}

fn status_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "Pending", "InProgress", "Succeeded", "Failed", "TimeOut", "Cancelled", "Canceled",
        ]).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["pending", "TIMEOUT", "Paused", "", " Pending"]).prop_map(str::to_owned),
        1 => odd_text(),
    ]
}

/// A timestamp as Defender might write it, and the time it must decode to when known.
#[derive(Debug, Clone)]
struct Stamp {
    raw: String,
    /// `None`: an odd value whose decoding is only required not to panic.
    expected: Option<Option<OffsetDateTime>>,
}

fn stamp() -> impl Strategy<Value = Stamp> {
    // 0001-01-01 to 9999-12-31, whole seconds.
    let documented = (
        -62_135_596_800..=253_402_300_799i64,
        0..=7usize,
        0..3u8,
        0..10_000_000u32,
    )
        .prop_map(|(seconds, digits, suffix, fraction)| {
            let base = OffsetDateTime::from_unix_timestamp(seconds).expect("in range");
            // `digits` fractional digits of a 7-digit fraction (Defender writes up to 7).
            let fraction = fraction / 10u32.pow(7 - digits as u32);
            let nanos = fraction * 10u32.pow(9 - digits as u32);
            let at = base.replace_nanosecond(nanos).expect("below one second");
            let mut raw = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second()
            );
            if digits > 0 {
                raw.push_str(&format!(".{fraction:0digits$}"));
            }
            raw.push_str(["Z", "", "+00:00"][usize::from(suffix)]);
            Stamp {
                raw,
                expected: Some(Some(at)),
            }
        });
    let odd = prop_oneof![
        prop::sample::select(vec![
            "",
            " ",
            "yesterday",
            "2024-02-30T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-02T24:00:00Z",
            "2016-12-31T23:59:60Z",
            "2024-01-02T13:39:46.77382061234567Z",
            "2024-01-02T13:39:46.Z",
            "2024-01-02T13:39:46+99:99",
            "2024-01-02T13:39:46-23:59",
            "9999-12-31T23:59:59-23:59",
            "9999-12-31T23:59:59.9999999-00:01",
            "0000-01-01T00:00:00+23:59",
            "+10000-01-01T00:00:00Z",
            "-0001-01-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.9999999+00:00",
            "0001-01-01T00:00:00-00:01",
            "2024-01-02",
            "13:39:46",
            "1704202786",
            "2024-01-02T13:39:46.7738206Z\u{0}",
        ])
        .prop_map(str::to_owned),
        odd_text(),
    ]
    .prop_map(|raw| Stamp {
        raw,
        expected: None,
    });
    prop_oneof![3 => documented, 1 => odd]
}

/// A MachineAction document with every field possibly mutated, plus unknown extra fields.
#[derive(Debug, Clone)]
struct Doc {
    fields: Vec<(&'static str, Field)>,
    stamps: Vec<(&'static str, Field<Stamp>)>,
    /// The last-update time spelled the docs' misspelled way.
    alias: bool,
    extra: Vec<(String, Value)>,
}

const STAMP_FIELDS: [&str; 3] = [
    "creationDateTimeUtc",
    "lastUpdateDateTimeUtc",
    "cancellationDateTimeUtc",
];

fn doc() -> impl Strategy<Value = Doc> {
    let id = field(prop_oneof![
        4 => Just(ACTION_ID.to_owned()),
        1 => Just(String::new()),
        1 => odd_text(),
    ]);
    let status = field(status_text());
    let others = vec(field(odd_text()), 9);
    let stamps = vec(field(stamp()), 3);
    let extra_key = any::<String>().prop_filter("an unknown key", |k| {
        !STRING_FIELDS.contains(&k.as_str()) && k != LAST_UPDATE_ALIAS
    });
    let extra = vec((extra_key, json_value()), 0..4);
    (id, status, others, stamps, any::<bool>(), extra).prop_map(
        |(id, status, others, stamps, alias, extra)| {
            let names = STRING_FIELDS
                .iter()
                .filter(|f| !["id", "status"].contains(f) && !STAMP_FIELDS.contains(f));
            let mut fields = vec![("id", id), ("status", status)];
            fields.extend(names.copied().zip(others));
            let stamps = STAMP_FIELDS.iter().copied().zip(stamps).collect();
            Doc {
                fields,
                stamps,
                alias,
                extra,
            }
        },
    )
}

impl Doc {
    fn to_json(&self) -> Value {
        let mut object = Map::new();
        // Unknown fields first, so a known one always wins a (filtered-out) name clash.
        for (key, value) in &self.extra {
            object.insert(key.clone(), value.clone());
        }
        for (name, field) in &self.fields {
            if let Some(value) = field.json(|s| Value::from(s.as_str())) {
                object.insert((*name).to_owned(), value);
            }
        }
        for (name, field) in &self.stamps {
            let name = if *name == "lastUpdateDateTimeUtc" && self.alias {
                LAST_UPDATE_ALIAS
            } else {
                name
            };
            if let Some(value) = field.json(|stamp| Value::from(stamp.raw.as_str())) {
                object.insert(name.to_owned(), value);
            }
        }
        Value::Object(object)
    }

    fn field(&self, name: &str) -> &Field {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&Field::Absent, |(_, f)| f)
    }

    fn text(&self, name: &str) -> Option<String> {
        self.field(name).text().cloned()
    }

    /// Whether the client must accept this document.
    fn decodable(&self) -> bool {
        !self
            .fields
            .iter()
            .any(|(_, f)| matches!(f, Field::Wrong(_)))
            && !self
                .stamps
                .iter()
                .any(|(_, f)| matches!(f, Field::Wrong(_)))
            && self.text("id").is_some_and(|id| !id.is_empty())
            && self.text("status").is_some()
    }

    /// Checks a decoded action against this document.
    fn check(&self, action: &MachineAction) -> Result<(), TestCaseError> {
        prop_assert_eq!(Some(action.id.clone()), self.text("id"));
        let status = self.text("status").map(|s| status_of(&s));
        prop_assert_eq!(Some(&action.status), status.as_ref());
        if matches!(action.status, ActionStatus::Other(_)) {
            prop_assert!(!action.status.is_final());
        }
        prop_assert_eq!(&action.action_type, &self.text("type").unwrap_or_default());
        prop_assert_eq!(
            &action.machine_id,
            &self.text("machineId").unwrap_or_default()
        );
        for (value, name) in [
            (&action.scope, "scope"),
            (&action.computer_dns_name, "computerDnsName"),
            (&action.requestor, "requestor"),
            (&action.requestor_comment, "requestorComment"),
            (&action.cancellation_requestor, "cancellationRequestor"),
            (&action.cancellation_comment, "cancellationComment"),
            (&action.title, "title"),
            (&action.external_id, "externalId"),
        ] {
            prop_assert_eq!(value, &self.text(name), "{}", name);
        }
        for (value, name) in [
            (action.creation_time, "creationDateTimeUtc"),
            (action.last_update_time, "lastUpdateDateTimeUtc"),
            (action.cancellation_time, "cancellationDateTimeUtc"),
        ] {
            let stamp = self
                .stamps
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, f)| f.text());
            match stamp {
                None => prop_assert_eq!(value, None, "{}", name),
                Some(Stamp {
                    expected: Some(expected),
                    raw,
                }) => prop_assert_eq!(value, *expected, "{} {:?}", name, raw),
                Some(Stamp { expected: None, .. }) => {}
            }
        }
        Ok(())
    }
}

fn header_value() -> impl Strategy<Value = Option<HeaderValue>> {
    prop_oneof![
        1 => Just(None),
        2 => prop::sample::select(vec![
            "0", "37", "18446744073709551615", "18446744073709551616", "-1", "1.5", " 37 ",
            "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT", "Wed, 21 Oct 2015 07:28:00 PST", "",
        ]).prop_map(|v| Some(HeaderValue::from_static(v))),
        1 => "[ -~]{0,40}".prop_map(|v| HeaderValue::from_str(&v).ok()),
    ]
}

// === properties ===

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_decode_or_are_malformed(body in vec(any::<u8>(), 0..512)) {
        check_2xx(&ok(body))?;
    }

    #[test]
    fn arbitrary_json_decodes_exactly_when_it_is_an_action(doc in json_value()) {
        let decoded = ok(serde_json::to_vec(&doc).expect("a Value serializes"));
        check_2xx(&decoded)?;
        // serde also reads a struct from a JSON array, field by field; only objects are
        // decided here, arrays need only not panic.
        if doc.is_array() {
            return Ok(());
        }
        let expected = expected_id(&doc);
        prop_assert_eq!(decoded.get.as_ref().ok().map(|a| a.id.clone()), expected.clone());
        prop_assert_eq!(decoded.cancel.as_ref().ok().map(|a| a.id.clone()), expected);
    }

    #[test]
    fn mutated_actions_decode_to_their_fields_or_are_malformed(doc in doc()) {
        let decoded = ok(serde_json::to_vec(&doc.to_json()).expect("a Value serializes"));
        check_2xx(&decoded)?;
        if doc.decodable() {
            let action = decoded.get.as_ref().map_err(|e| TestCaseError::fail(format!("{e}")))?;
            doc.check(action)?;
            let action = decoded.run.as_ref().map_err(|e| TestCaseError::fail(format!("{e}")))?;
            doc.check(action)?;
        } else {
            prop_assert!(decoded.get.is_err(), "accepted {}", doc.to_json());
        }
    }

    #[test]
    fn error_answers_become_api_errors(
        status in (300..600u16).prop_filter("an HTTP status", |s| StatusCode::from_u16(*s).is_ok()),
        body in prop_oneof![
            vec(any::<u8>(), 0..600),
            json_value().prop_map(|v| serde_json::to_vec(&v).expect("a Value serializes")),
            (field(odd_text()), field(odd_text()), field(odd_text())).prop_map(|(code, message, target)| {
                let mut error = Map::new();
                for (name, field) in [("code", code), ("message", message), ("target", target)] {
                    if let Some(value) = field.json(|s| Value::from(s.as_str())) {
                        error.insert(name.to_owned(), value);
                    }
                }
                serde_json::to_vec(&json!({ "error": error })).expect("a Value serializes")
            }),
        ],
        retry_after in header_value(),
    ) {
        let status = StatusCode::from_u16(status).expect("filtered");
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(header::RETRY_AFTER, value);
        }
        let decoded = answer(status, headers, body.clone());
        let envelope = serde_json::from_slice::<model::WireErrorBody>(&body).is_ok();
        for result in [&decoded.get, &decoded.run, &decoded.cancel] {
            let Err(Error::Api(err)) = result else {
                return Err(TestCaseError::fail(format!("{status}: {result:?}")));
            };
            prop_assert_eq!(err.status, status.as_u16());
            if !envelope {
                // A body that is not Defender's envelope is quoted, at most 200 bytes of it.
                let quoted = String::from_utf8_lossy(&body[..body.len().min(200)]);
                prop_assert_eq!(&err.message, &quoted);
            }
        }
        prop_assert!(matches!(decoded.list, Err(Error::Api(_))));
    }

    #[test]
    fn documented_timestamps_round_trip(stamp in stamp()) {
        let parsed = model::parse_timestamp(Some(&stamp.raw));
        if let Some(expected) = stamp.expected {
            prop_assert_eq!(parsed, expected, "{:?}", stamp.raw);
        }
        if let Some(at) = parsed {
            let literal = model::format_timestamp(at);
            prop_assert_eq!(model::parse_timestamp(Some(&literal)), Some(at), "{}", literal);
        }
    }
}

proptest! {
    // Each case holds up to six documents: a quarter of the cases covers as many.
    #![proptest_config(ProptestConfig { cases: config().cases.div_ceil(4), ..config() })]

    #[test]
    fn mutated_lists_decode_every_action_or_are_malformed(
        docs in vec(doc(), 0..6),
        next_link in field(odd_text()),
        context in json_value(),
    ) {
        let mut page = Map::new();
        page.insert("@odata.context".to_owned(), context);
        page.insert(
            "value".to_owned(),
            Value::Array(docs.iter().map(Doc::to_json).collect()),
        );
        if let Some(value) = next_link.json(|s| Value::from(s.as_str())) {
            page.insert("@odata.nextLink".to_owned(), value);
        }
        let decoded = ok(serde_json::to_vec(&Value::Object(page)).expect("a Value serializes"));
        check_2xx(&decoded)?;
        let decodable =
            docs.iter().all(Doc::decodable) && !matches!(next_link, Field::Wrong(_));
        match &decoded.list {
            Ok(actions) => {
                prop_assert!(decodable);
                prop_assert_eq!(actions.len(), docs.len());
                for (doc, action) in docs.iter().zip(actions) {
                    doc.check(action)?;
                }
            }
            Err(_) => prop_assert!(!decodable),
        }
    }
}

/// Near the ends of RFC 3339's years an offset moves a time outside them in UTC: such a time
/// is dropped, rather than kept to panic later when it is written into a `$filter`.
#[test]
fn times_beyond_the_utc_years_are_dropped_not_a_panic() {
    for raw in ["9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+00:01"] {
        assert_eq!(model::parse_timestamp(Some(raw)), None, "{raw}");
    }
    let last = model::parse_timestamp(Some("9999-12-31T23:59:59.9999999Z")).expect("in range");
    assert_eq!(
        model::format_timestamp(last),
        "9999-12-31T23:59:59.9999999Z"
    );
    // Whatever it is given, formatting does not panic.
    let _ = model::format_timestamp(time::macros::datetime!(9999-12-31 23:59:59 -23:59));
}

/// Bodies no generator is likely to hit: deep nesting, numbers beyond f64, lone surrogates,
/// duplicate keys, a byte-order mark, trailing garbage.
#[test]
fn hostile_json_texts_are_malformed_not_a_crash() {
    let bodies: Vec<Vec<u8>> = vec![
        "[".repeat(100_000).into_bytes(),
        format!("{}{}", "{\"a\":".repeat(50_000), "1").into_bytes(),
        br#"{"id": 1e400, "status": "Pending"}"#.to_vec(),
        br#"{"id": "\ud800", "status": "Pending"}"#.to_vec(),
        br#"{"id": "a", "id": "b", "status": "Pending"}"#.to_vec(),
        format!(r#"{{"id":"{ACTION_ID}","status":"Pending","lastUpdateTimeUtc":"2024-01-02T13:39:46Z","lastUpdateDateTimeUtc":"2024-01-02T13:39:46Z"}}"#).into_bytes(),
        b"\xef\xbb\xbf{\"id\":\"a\",\"status\":\"Pending\"}".to_vec(),
        br#"{"id":"a","status":"Pending"} trailing"#.to_vec(),
        br#"{"value": null}"#.to_vec(),
        br#"{"value": [null]}"#.to_vec(),
        br#"{"value": {"id":"a"}}"#.to_vec(),
        Vec::new(),
    ];
    for body in bodies {
        let decoded = ok(body.clone());
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        assert!(decoded.get.is_err(), "{shown}");
        check_2xx(&decoded).unwrap_or_else(|err| panic!("{shown}: {err}"));
    }
}
