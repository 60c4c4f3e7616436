//! Fault injection: latency (before the handler or after it), 500s, 429 storms, 403s, lost responses, connection resets and
//! malformed JSON, per endpoint; and single malformed actions inside a valid list page.
//!
//! Rolls come from a seeded stream separate from the action outcomes, so turning faults on
//! never changes which scans fail, and a given seed replays the same faults in the same order.
//! Per request the stream is consumed in a fixed order, and a knob at 0 consumes nothing, so
//! adding a knob never shifts the rolls of a run that leaves it off:
//!
//! 1. before the handler ([`FaultState::roll`]): throttle, error, reset (plus one roll for the
//!    reset point when it is [`ResetPoint::Either`]);
//! 2. after a successful handler: lost response ([`FaultState::roll_lost_response`]), then
//!    malformed body ([`FaultState::roll_malformed`], plus one roll for its kind).

use std::time::Duration;

use super::rng::Rng;
use super::stats::Endpoint;

/// Faults for one endpoint. `Default` injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointFaults {
    /// Added before the request is handled (on the injectable clock, so tests don't wait).
    pub latency: Duration,
    /// Added after the request took effect, before its answer leaves (a slow way back): a
    /// client that gives up meanwhile never learns that a scan POST created its action.
    pub answer_latency: Duration,
    /// Share (0..=1) of requests answered 500 `InternalServerError` (503
    /// `temporarily_unavailable` on the token endpoint) without taking effect.
    pub error_rate: f64,
    /// Share (0..=1) of requests answered 429 with `Retry-After` (a throttling storm at 1.0).
    pub throttle_rate: f64,
    /// `Retry-After` sent with injected 429s (rounded up, at least 1 s).
    pub retry_after: Duration,
    /// Share (0..=1) of successful requests that take effect but are answered 500 anyway, as
    /// when a response is lost: a retried scan then meets the action it already created.
    pub lost_response_rate: f64,
    /// Answer 403 `Forbidden` "Missing application roles" (Defender endpoints only).
    pub forbidden: bool,
    /// Share (0..=1) of requests whose connection is dropped instead of answered: the client
    /// gets no status line at all, only a transport error ("connection closed before message
    /// completed"). Whether the request took effect first is `reset_at`.
    pub reset_rate: f64,
    /// Where an injected reset cuts the exchange.
    pub reset_at: ResetPoint,
    /// Share (0..=1) of successful answers whose JSON body is garbled (truncated, or with
    /// wrongly typed fields) while the status and `Content-Type: application/json` stay: the
    /// request took effect (a scan POST created its action), only the answer is unreadable.
    pub malformed_rate: f64,
}

/// Where an injected connection reset happens. A POST makes the difference: before, nothing
/// was created and resending is safe; after, the scan exists and only its answer was lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ResetPoint {
    /// Before the handler runs: the request never takes effect.
    Before,
    /// After the handler ran: the request took effect, the answer is lost.
    After,
    /// Before or after, half and half, decided by one more roll of the fault stream.
    #[default]
    Either,
}

/// How an injected malformed body is garbled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// The document cut in half, as by a proxy that gave up mid-body.
    Truncated,
    /// Valid JSON of the wrong shape: every top-level string becomes a number and every
    /// top-level array a string (`"id": 42`, `"value": "[...]"`).
    WrongTypes,
}

/// Fault settings for every endpoint. `Default` injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Token endpoint (v1 and v2.0).
    pub token: EndpointFaults,
    /// `runAntiVirusScan`.
    pub run_scan: EndpointFaults,
    /// `GET machineactions/{id}`.
    pub get_action: EndpointFaults,
    /// `GET machineactions`.
    pub list_actions: EndpointFaults,
    /// `machineactions/{id}/cancel`.
    pub cancel: EndpointFaults,
    /// Refuse every token request as if the client secret had expired (401 `invalid_client`,
    /// AADSTS7000222), a non-retryable configuration error.
    pub token_secret_expired: bool,
    /// Actions (by id) served malformed in every list page that holds them: their `status` is a
    /// number, the rest of the page stays valid, and `GET machineactions/{id}` still reads them
    /// (one bad entity in a collection, as a proxy or a new field type could produce). No roll.
    pub malformed_list_entries: Vec<String>,
}

impl Faults {
    /// The same faults on the four Defender endpoints, none on the token endpoint.
    pub fn defender_api(faults: EndpointFaults) -> Self {
        Self {
            run_scan: faults.clone(),
            get_action: faults.clone(),
            list_actions: faults.clone(),
            cancel: faults,
            ..Self::default()
        }
    }

    /// The settings for one endpoint (`None` for unknown paths).
    pub fn endpoint(&self, endpoint: Endpoint) -> Option<&EndpointFaults> {
        match endpoint {
            Endpoint::Token => Some(&self.token),
            Endpoint::RunScan => Some(&self.run_scan),
            Endpoint::GetAction => Some(&self.get_action),
            Endpoint::ListActions => Some(&self.list_actions),
            Endpoint::Cancel => Some(&self.cancel),
            Endpoint::Other => None,
        }
    }

    /// The settings for one endpoint, to change (`None` for unknown paths).
    pub(crate) fn endpoint_mut(&mut self, endpoint: Endpoint) -> Option<&mut EndpointFaults> {
        match endpoint {
            Endpoint::Token => Some(&mut self.token),
            Endpoint::RunScan => Some(&mut self.run_scan),
            Endpoint::GetAction => Some(&mut self.get_action),
            Endpoint::ListActions => Some(&mut self.list_actions),
            Endpoint::Cancel => Some(&mut self.cancel),
            Endpoint::Other => None,
        }
    }
}

/// What a roll decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    Nothing,
    Error,
    Throttle(Duration),
    /// Drop the connection now: the request does not take effect.
    Reset,
    /// Let the request take effect, then drop the connection instead of answering.
    ResetAfterEffect,
}

/// Current settings plus the seeded roll stream.
#[derive(Debug)]
pub(crate) struct FaultState {
    faults: Faults,
    rng: Rng,
}

impl FaultState {
    pub(crate) fn new(faults: Faults, seed: u64) -> Self {
        Self {
            faults,
            rng: Rng::stream(seed, "faults"),
        }
    }

    pub(crate) fn set(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub(crate) fn settings(&self) -> &Faults {
        &self.faults
    }

    pub(crate) fn latency(&self, endpoint: Endpoint) -> Duration {
        self.faults
            .endpoint(endpoint)
            .map_or(Duration::ZERO, |f| f.latency)
    }

    pub(crate) fn answer_latency(&self, endpoint: Endpoint) -> Duration {
        self.faults
            .endpoint(endpoint)
            .map_or(Duration::ZERO, |f| f.answer_latency)
    }

    pub(crate) fn forbidden(&self, endpoint: Endpoint) -> bool {
        self.faults.endpoint(endpoint).is_some_and(|f| f.forbidden)
    }

    /// Throttling is rolled first: during a storm nothing else gets through. Then errors, then
    /// resets (and, for [`ResetPoint::Either`], a fair coin for the point).
    pub(crate) fn roll(&mut self, endpoint: Endpoint) -> Injected {
        let Some(f) = self.faults.endpoint(endpoint) else {
            return Injected::Nothing;
        };
        let (throttle_rate, error_rate, retry_after) =
            (f.throttle_rate, f.error_rate, f.retry_after);
        let (reset_rate, reset_at) = (f.reset_rate, f.reset_at);
        if self.rng.chance(throttle_rate) {
            Injected::Throttle(retry_after)
        } else if self.rng.chance(error_rate) {
            Injected::Error
        } else if self.rng.chance(reset_rate) {
            let after = match reset_at {
                ResetPoint::Before => false,
                ResetPoint::After => true,
                ResetPoint::Either => self.rng.chance(0.5),
            };
            if after {
                Injected::ResetAfterEffect
            } else {
                Injected::Reset
            }
        } else {
            Injected::Nothing
        }
    }

    pub(crate) fn roll_lost_response(&mut self, endpoint: Endpoint) -> bool {
        let rate = self
            .faults
            .endpoint(endpoint)
            .map_or(0.0, |f| f.lost_response_rate);
        self.rng.chance(rate)
    }

    /// Whether (and how) to garble a successful answer; rolled after the lost-response roll.
    pub(crate) fn roll_malformed(&mut self, endpoint: Endpoint) -> Option<Malformed> {
        let rate = self
            .faults
            .endpoint(endpoint)
            .map_or(0.0, |f| f.malformed_rate);
        if !self.rng.chance(rate) {
            return None;
        }
        Some(if self.rng.chance(0.5) {
            Malformed::WrongTypes
        } else {
            Malformed::Truncated
        })
    }
}

/// The garbled form of a JSON body. Both kinds fail a typed decoding of any simulator answer:
/// half of a JSON object never has its closing brace, every answer carries a string field to
/// retype, and a document with nothing to retype (not an object, or an object without strings
/// or arrays) is truncated instead.
pub(crate) fn garble(kind: Malformed, body: &[u8]) -> Vec<u8> {
    let truncated = || body[..body.len() / 2].to_vec();
    if kind == Malformed::Truncated {
        return truncated();
    }
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) else {
        return truncated();
    };
    let mut retyped_any = false;
    let retyped: serde_json::Map<_, _> = fields
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                serde_json::Value::String(_) => serde_json::Value::from(42),
                serde_json::Value::Array(_) => serde_json::Value::from("[...]"),
                other => return (key, other),
            };
            retyped_any = true;
            (key, value)
        })
        .collect();
    match serde_json::to_vec(&retyped) {
        Ok(bytes) if retyped_any => bytes,
        _ => truncated(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_faults_by_default_and_rates_are_honoured() {
        let mut state = FaultState::new(Faults::default(), 1);
        assert!((0..100).all(|_| state.roll(Endpoint::RunScan) == Injected::Nothing));
        state.set(Faults::defender_api(EndpointFaults {
            error_rate: 0.5,
            ..EndpointFaults::default()
        }));
        let errors = (0..1000)
            .filter(|_| state.roll(Endpoint::GetAction) == Injected::Error)
            .count();
        assert!((400..600).contains(&errors), "{errors}");
        assert_eq!(state.roll(Endpoint::Token), Injected::Nothing);
        assert_eq!(state.roll(Endpoint::Other), Injected::Nothing);
    }

    #[test]
    fn storm_throttles_everything() {
        let storm = EndpointFaults {
            throttle_rate: 1.0,
            error_rate: 1.0,
            retry_after: Duration::from_secs(7),
            ..EndpointFaults::default()
        };
        let mut state = FaultState::new(Faults::defender_api(storm), 3);
        assert!((0..50).all(|_| state.roll(Endpoint::Cancel) == Injected::Throttle(Duration::from_secs(7))));
    }

    fn resets(reset_at: ResetPoint) -> Faults {
        Faults::defender_api(EndpointFaults {
            reset_rate: 1.0,
            reset_at,
            ..EndpointFaults::default()
        })
    }

    #[test]
    fn resets_happen_where_reset_at_says() {
        let mut state = FaultState::new(resets(ResetPoint::Before), 5);
        assert!((0..50).all(|_| state.roll(Endpoint::RunScan) == Injected::Reset));
        state.set(resets(ResetPoint::After));
        assert!((0..50).all(|_| state.roll(Endpoint::RunScan) == Injected::ResetAfterEffect));
        assert_eq!(state.roll(Endpoint::Token), Injected::Nothing);
    }

    #[test]
    fn either_reset_point_is_a_seeded_fair_coin() {
        let run = |seed| {
            let mut state = FaultState::new(resets(ResetPoint::Either), seed);
            (0..1000)
                .map(|_| state.roll(Endpoint::ListActions))
                .collect::<Vec<_>>()
        };
        let first = run(9);
        assert_eq!(first, run(9), "a seed replays the same resets");
        let after = first
            .iter()
            .filter(|i| **i == Injected::ResetAfterEffect)
            .count();
        assert!((400..600).contains(&after), "{after}");
        assert_eq!(
            first.iter().filter(|i| **i == Injected::Reset).count(),
            1000 - after
        );
    }

    #[test]
    fn throttles_and_errors_win_over_resets() {
        let faults = |throttle_rate, error_rate| {
            Faults::defender_api(EndpointFaults {
                throttle_rate,
                error_rate,
                reset_rate: 1.0,
                reset_at: ResetPoint::Before,
                retry_after: Duration::from_secs(1),
                ..EndpointFaults::default()
            })
        };
        let mut state = FaultState::new(faults(1.0, 0.0), 2);
        assert!(matches!(
            state.roll(Endpoint::Cancel),
            Injected::Throttle(_)
        ));
        state.set(faults(0.0, 1.0));
        assert_eq!(state.roll(Endpoint::Cancel), Injected::Error);
    }

    #[test]
    fn new_knobs_at_zero_leave_the_other_rolls_unchanged() {
        let rolls = |faults: EndpointFaults| {
            let mut state = FaultState::new(Faults::defender_api(faults), 11);
            (0..200)
                .map(|_| {
                    let injected = state.roll(Endpoint::GetAction);
                    let malformed = state.roll_malformed(Endpoint::GetAction);
                    (injected, malformed)
                })
                .collect::<Vec<_>>()
        };
        let errors = EndpointFaults {
            error_rate: 0.3,
            ..EndpointFaults::default()
        };
        let with_zero_knobs = EndpointFaults {
            reset_rate: 0.0,
            reset_at: ResetPoint::Either,
            malformed_rate: 0.0,
            ..errors.clone()
        };
        assert_eq!(rolls(errors), rolls(with_zero_knobs));
    }

    #[test]
    fn malformed_answers_follow_the_rate_and_use_both_kinds() {
        let mut state = FaultState::new(Faults::default(), 4);
        assert!((0..100).all(|_| state.roll_malformed(Endpoint::RunScan).is_none()));
        state.set(Faults {
            list_actions: EndpointFaults {
                malformed_rate: 1.0,
                ..EndpointFaults::default()
            },
            ..Faults::default()
        });
        let kinds: Vec<_> = (0..200)
            .map(|_| state.roll_malformed(Endpoint::ListActions))
            .collect();
        assert!(kinds.iter().all(Option::is_some));
        assert!(kinds.contains(&Some(Malformed::Truncated)));
        assert!(kinds.contains(&Some(Malformed::WrongTypes)));
        assert_eq!(state.roll_malformed(Endpoint::GetAction), None);
    }

    /// What the gateway's decoder sees: lenient, every field optional, but typed.
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Entity {
        id: Option<String>,
        status: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct List {
        value: Vec<Entity>,
    }

    #[test]
    fn garbled_bodies_never_decode() {
        let entity = br#"{"@odata.context":"x","id":"7f3c2a91-5d4e-4b8a-9c1f-2e6d8b0a4c37","status":"Pending","errorHResult":0,"commands":[]}"#;
        let list = br#"{"@odata.context":"x","value":[{"id":"a","status":"Pending"}]}"#;
        for kind in [Malformed::Truncated, Malformed::WrongTypes] {
            let garbled = garble(kind, entity);
            assert!(
                serde_json::from_slice::<Entity>(&garbled).is_err(),
                "{kind:?}: {}",
                String::from_utf8_lossy(&garbled)
            );
            assert!(serde_json::from_slice::<List>(&garble(kind, list)).is_err());
        }
        let retyped: serde_json::Value =
            serde_json::from_slice(&garble(Malformed::WrongTypes, entity)).unwrap();
        assert_eq!(retyped["id"], 42, "valid JSON, wrong types");
        assert_eq!(retyped["errorHResult"], 0, "non-strings are kept");
    }

    #[test]
    fn a_body_with_nothing_to_retype_is_truncated_instead() {
        for body in [&b"[1,2,3]"[..], b"{\"n\":1}", b"{}", b""] {
            let garbled = garble(Malformed::WrongTypes, body);
            assert_eq!(garbled, &body[..body.len() / 2]);
            assert!(serde_json::from_slice::<serde_json::Value>(&garbled).is_err());
        }
    }
}
