//! Fault injection: latency, 500s, 429 storms, 403s and lost responses, per endpoint.
//!
//! Rolls come from a seeded stream separate from the action outcomes, so turning faults on
//! never changes which scans fail, and a given seed replays the same faults in the same order.

use std::time::Duration;

use super::rng::Rng;
use super::stats::Endpoint;

/// Faults for one endpoint. `Default` injects nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointFaults {
    /// Added before the request is handled (on the injectable clock, so tests don't wait).
    pub latency: Duration,
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
}

/// What a roll decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    Nothing,
    Error,
    Throttle(Duration),
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

    pub(crate) fn forbidden(&self, endpoint: Endpoint) -> bool {
        self.faults.endpoint(endpoint).is_some_and(|f| f.forbidden)
    }

    /// Throttling is rolled first: during a storm nothing else gets through.
    pub(crate) fn roll(&mut self, endpoint: Endpoint) -> Injected {
        let Some(f) = self.faults.endpoint(endpoint) else {
            return Injected::Nothing;
        };
        let (throttle_rate, error_rate, retry_after) =
            (f.throttle_rate, f.error_rate, f.retry_after);
        if self.rng.chance(throttle_rate) {
            Injected::Throttle(retry_after)
        } else if self.rng.chance(error_rate) {
            Injected::Error
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
}
