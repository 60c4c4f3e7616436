//! Fault settings per endpoint from the command line: `--fault ENDPOINT:KNOB=VALUE,...` and
//! `--fault-forbidden ENDPOINTS`, so `simulate` reaches every knob of [`Faults`] that the
//! in-process API has, one endpoint at a time.
//!
//! A spec names one endpoint (or `api`, the four Defender endpoints) and the knobs to set on
//! it; knobs it does not name keep their value. Knobs the token endpoint never applies (a 403,
//! answer latency, lost responses) are refused there rather than silently ignored.

use std::str::FromStr;
use std::time::Duration;

use super::faults::{Faults, ResetPoint};
use super::stats::Endpoint;

/// The endpoints `--fault` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultTarget {
    /// The four Defender endpoints.
    Api,
    /// The token endpoint (v1 and v2.0).
    Token,
    /// `runAntiVirusScan`.
    RunScan,
    /// `GET machineactions/{id}`.
    GetAction,
    /// `GET machineactions`.
    ListActions,
    /// `machineactions/{id}/cancel`.
    Cancel,
}

/// The Defender endpoints `--fault-forbidden` can name (the token endpoint has no 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiTarget {
    /// The four Defender endpoints.
    Api,
    /// `runAntiVirusScan`.
    RunScan,
    /// `GET machineactions/{id}`.
    GetAction,
    /// `GET machineactions`.
    ListActions,
    /// `machineactions/{id}/cancel`.
    Cancel,
}

const DEFENDER: [Endpoint; 4] = [
    Endpoint::RunScan,
    Endpoint::GetAction,
    Endpoint::ListActions,
    Endpoint::Cancel,
];

impl FaultTarget {
    fn endpoints(self) -> &'static [Endpoint] {
        match self {
            Self::Api => &DEFENDER,
            Self::Token => &[Endpoint::Token],
            Self::RunScan => &[Endpoint::RunScan],
            Self::GetAction => &[Endpoint::GetAction],
            Self::ListActions => &[Endpoint::ListActions],
            Self::Cancel => &[Endpoint::Cancel],
        }
    }
}

impl ApiTarget {
    /// Sets the missing-roles 403 on the named endpoints.
    pub fn apply(self, faults: &mut Faults) {
        let endpoints: &[Endpoint] = match self {
            Self::Api => &DEFENDER,
            Self::RunScan => &[Endpoint::RunScan],
            Self::GetAction => &[Endpoint::GetAction],
            Self::ListActions => &[Endpoint::ListActions],
            Self::Cancel => &[Endpoint::Cancel],
        };
        for endpoint in endpoints {
            if let Some(f) = faults.endpoint_mut(*endpoint) {
                f.forbidden = true;
            }
        }
    }
}

/// One knob of [`super::EndpointFaults`] with its value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Knob {
    Latency(Duration),
    AnswerLatency(Duration),
    ErrorRate(f64),
    ThrottleRate(f64),
    RetryAfter(Duration),
    LostResponseRate(f64),
    Forbidden(bool),
    ResetRate(f64),
    ResetAt(ResetPoint),
    MalformedRate(f64),
}

const KNOBS: &str = "latency, answer-latency, error-rate, throttle-rate, retry-after, \
                     lost-response-rate, forbidden, reset-rate, reset-at, malformed-rate";

impl Knob {
    fn parse(name: &str, value: Option<&str>) -> Result<Self, String> {
        let value_of = |what: &str| {
            value.ok_or_else(|| format!("fault '{name}' needs a value: {name}={what}"))
        };
        let knob = match name {
            "latency" => Self::Latency(duration(name, value_of("2s")?)?),
            "answer-latency" => Self::AnswerLatency(duration(name, value_of("2s")?)?),
            "error-rate" => Self::ErrorRate(share(name, value_of("0.2")?)?),
            "throttle-rate" => Self::ThrottleRate(share(name, value_of("0.2")?)?),
            "retry-after" => Self::RetryAfter(duration(name, value_of("30s")?)?),
            "lost-response-rate" => Self::LostResponseRate(share(name, value_of("0.2")?)?),
            // A bare `forbidden` turns the 403 on.
            "forbidden" => Self::Forbidden(match value {
                None => true,
                Some(v) => boolean(name, v)?,
            }),
            "reset-rate" => Self::ResetRate(share(name, value_of("0.2")?)?),
            "reset-at" => {
                let v = value_of("after")?;
                Self::ResetAt(
                    <ResetPoint as clap::ValueEnum>::from_str(v.trim(), true)
                        .map_err(|_| format!("reset-at '{v}' must be before, after or either"))?,
                )
            }
            "malformed-rate" => Self::MalformedRate(share(name, value_of("0.2")?)?),
            other => return Err(format!("unknown fault '{other}' (one of {KNOBS})")),
        };
        Ok(knob)
    }

    /// Why the token endpoint cannot take this knob: its gate never applies it.
    fn not_on_token(self) -> Option<&'static str> {
        match self {
            Self::Forbidden(_) => Some("forbidden (the token endpoint answers no 403)"),
            Self::AnswerLatency(_) => Some("answer-latency"),
            Self::LostResponseRate(_) => Some("lost-response-rate"),
            _ => None,
        }
    }
}

/// `ENDPOINT:KNOB=VALUE[,KNOB=VALUE...]`, e.g. `run-scan:error-rate=0.2,latency=2s` or
/// `cancel:forbidden`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    target: FaultTarget,
    knobs: Vec<Knob>,
}

impl FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (target, knobs) = s.trim().split_once(':').ok_or_else(|| {
            format!(
                "fault spec '{s}' must look like ENDPOINT:KNOB=VALUE[,KNOB=VALUE...], e.g. run-scan:error-rate=0.2,latency=2s"
            )
        })?;
        let target = <FaultTarget as clap::ValueEnum>::from_str(target.trim(), true).map_err(|_| {
            format!(
                "unknown endpoint '{}' in fault spec '{s}' (one of api, token, run-scan, get-action, list-actions, cancel)",
                target.trim()
            )
        })?;
        let knobs = knobs
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| match k.split_once('=') {
                Some((name, value)) => Knob::parse(name.trim(), Some(value.trim())),
                None => Knob::parse(k, None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if knobs.is_empty() {
            return Err(format!("fault spec '{s}' sets no fault (one of {KNOBS})"));
        }
        if target == FaultTarget::Token
            && let Some(why) = knobs.iter().find_map(|k| k.not_on_token())
        {
            return Err(format!(
                "fault spec '{s}': {why} is not injected on the token endpoint"
            ));
        }
        Ok(Self { target, knobs })
    }
}

impl FaultSpec {
    /// Sets this spec's knobs on its endpoints; the others keep their value.
    pub fn apply(&self, faults: &mut Faults) {
        for endpoint in self.target.endpoints() {
            let Some(f) = faults.endpoint_mut(*endpoint) else {
                continue;
            };
            for knob in &self.knobs {
                match *knob {
                    Knob::Latency(v) => f.latency = v,
                    Knob::AnswerLatency(v) => f.answer_latency = v,
                    Knob::ErrorRate(v) => f.error_rate = v,
                    Knob::ThrottleRate(v) => f.throttle_rate = v,
                    Knob::RetryAfter(v) => f.retry_after = v,
                    Knob::LostResponseRate(v) => f.lost_response_rate = v,
                    Knob::Forbidden(v) => f.forbidden = v,
                    Knob::ResetRate(v) => f.reset_rate = v,
                    Knob::ResetAt(v) => f.reset_at = v,
                    Knob::MalformedRate(v) => f.malformed_rate = v,
                }
            }
        }
    }
}

/// A share between 0 and 1, as the `--fault-*-rate` flags take.
fn share(name: &str, s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{name} '{s}' is not a share between 0 and 1")),
    }
}

fn duration(name: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{name} '{s}': {e} (e.g. 2s, 500ms)"))
}

fn boolean(name: &str, s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("{name} '{s}' must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EndpointFaults;

    fn applied(specs: &[&str]) -> Faults {
        let mut faults = Faults::default();
        for spec in specs {
            spec.parse::<FaultSpec>()
                .unwrap_or_else(|e| panic!("{spec}: {e}"))
                .apply(&mut faults);
        }
        faults
    }

    #[test]
    fn a_spec_sets_only_its_endpoint_and_knobs() {
        let faults = applied(&["run-scan:error-rate=0.2, latency=2s,forbidden"]);
        assert_eq!(
            faults.run_scan,
            EndpointFaults {
                error_rate: 0.2,
                latency: Duration::from_secs(2),
                forbidden: true,
                ..EndpointFaults::default()
            }
        );
        assert_eq!(faults.get_action, EndpointFaults::default());
        assert_eq!(faults.token, EndpointFaults::default());
    }

    #[test]
    fn api_names_the_four_defender_endpoints_and_later_specs_override() {
        let faults = applied(&[
            "api:throttle-rate=1,retry-after=7s,reset-at=before",
            "cancel:throttle-rate=0",
            "token:malformed-rate=0.5,reset-rate=0.1",
        ]);
        for f in [&faults.run_scan, &faults.get_action, &faults.list_actions] {
            assert_eq!(f.throttle_rate, 1.0);
            assert_eq!(f.retry_after, Duration::from_secs(7));
            assert_eq!(f.reset_at, ResetPoint::Before);
        }
        assert_eq!(faults.cancel.throttle_rate, 0.0);
        assert_eq!(faults.cancel.retry_after, Duration::from_secs(7));
        assert_eq!(
            (faults.token.malformed_rate, faults.token.reset_rate),
            (0.5, 0.1)
        );
        let faults = applied(&["list-actions:forbidden", "list-actions:forbidden=false"]);
        assert!(!faults.list_actions.forbidden);
    }

    #[test]
    fn forbidden_targets_set_the_403() {
        let mut faults = Faults::default();
        ApiTarget::Cancel.apply(&mut faults);
        assert!(faults.cancel.forbidden && !faults.run_scan.forbidden);
        ApiTarget::Api.apply(&mut faults);
        assert!(
            [
                &faults.run_scan,
                &faults.get_action,
                &faults.list_actions,
                &faults.cancel
            ]
            .iter()
            .all(|f| f.forbidden)
        );
        assert!(!faults.token.forbidden);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, expected) in [
            ("run-scan", "must look like ENDPOINT:KNOB=VALUE"),
            ("machines:error-rate=0.1", "unknown endpoint 'machines'"),
            ("run-scan:", "sets no fault"),
            ("run-scan:colour=red", "unknown fault 'colour'"),
            ("run-scan:error-rate=2", "error-rate '2' is not a share"),
            ("run-scan:error-rate", "needs a value: error-rate=0.2"),
            ("get-action:latency=soon", "latency 'soon'"),
            ("cancel:forbidden=maybe", "must be true or false"),
            (
                "cancel:reset-at=sometimes",
                "must be before, after or either",
            ),
            (
                "token:forbidden",
                "forbidden (the token endpoint answers no 403)",
            ),
            (
                "token:lost-response-rate=0.1",
                "lost-response-rate is not injected",
            ),
            ("token:answer-latency=1s", "answer-latency is not injected"),
        ] {
            let err = spec.parse::<FaultSpec>().unwrap_err();
            assert!(err.contains(expected), "{spec}: {err}");
        }
    }
}
